"""``python launch/bench/bench_data.py``: throughput of data preparation and of the training loader, in one run.

Gives the numbers behind two questions, measured on the same machine in one run: how fast ``prepare`` turns
text into shards (per tokenizer: SentencePiece, and GPT-2's BPE when ``--gpt2-ranks`` gives its ranks file; with
1 and 2 workers, and as an array job of 2 one-worker tasks plus the merge), and what reading tar shards by
random access (``TokenLoader``) costs compared with the plainest reader of the same tokens, a flat
``np.memmap``. The SentencePiece tokenizer is trained once and timed separately. Each timed preparation starts
from a new directory that already holds the tokenizer and its config, so it times reading, tokenising, wrapping
and writing shards only. The streaming loader (``StreamLoader``) reads the same shards from ``python -m
http.server`` on 127.0.0.1. Every timed configuration runs ``--repeat`` times and the table shows the median.
This is a benchmark, not a test. It only checks that every timed run of a tokenizer wrote the same shards and
that the readers return the same batches.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator


import numpy as np
import torch

from data_prep.config import PrepareConfig, save_resolved
from data_prep.documents import list_input_files
from data_prep.merge import merge
from data_prep.prepare import CONFIG_NAME, Task, prepare, resolved, train_tokenizer
from pipeline.runtime.data import TokenLoader, TokenShards
from pipeline.runtime.dataset import epoch_order
from pipeline.runtime.stream import StreamLoader

CORPUS = Path(__file__).resolve().parents[2] / "data_prep" / "corpus" / "shakespeare"
# (label, workers per task, tasks): 1 and 2 workers in one job, and an array job of 2 one-worker tasks
RUNS = (("1 worker", 1, 1), ("2 workers", 2, 1), ("2 tasks", 1, 2))
OWT_TOKENS = 9e9  # OpenWebText in GPT-2 tokens, for the cluster-scale estimate
LOADER_WORKERS = (0, 2)
BATCH_SIZE = 32
CHECKED_BATCHES = 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch/bench/bench_data.py", description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", default=[str(CORPUS)], metavar="PATH",
                        help="text/JSONL/FASTA files or directories (default: the embedded Shakespeare corpus)")
    parser.add_argument("--out", help="empty or new scratch directory, kept afterwards (default: a temporary one)")
    parser.add_argument("--seq-len", type=int, default=128, help="sequence length L")
    parser.add_argument("--shard-mb", type=float, default=0.25, help="text megabytes per shard")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per configuration (median reported)")
    parser.add_argument("--replicate", type=int, default=8,
                        help="use this many copies of the input, so that worker start-up does not dominate")
    parser.add_argument("--gpt2-ranks", metavar="PATH", help="GPT-2's gpt2.tiktoken: also time the GPT-2 BPE")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.out and Path(args.out).exists() and any(Path(args.out).iterdir()):
        print(f"error: {args.out} is not empty: choose an empty or new directory", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="data_prep-bench-") as tmp:
        out = Path(args.out or tmp)
        inputs = replicate(args.input, args.replicate, out / "input")
        tokenizers = ["spm:4000"] + ([f"gpt2:{args.gpt2_ranks}"] if args.gpt2_ranks else [])
        configs = [resolved(PrepareConfig(inputs=inputs, out=str(out / f"tokenizer-{k}"), tokenizer=name,
                                          seq_len=args.seq_len, shard_mb=args.shard_mb))
                   for k, name in enumerate(tokenizers)]
        for cfg in configs:
            cfg.validate()
        results = {
            "machine": machine(),
            "settings": {"inputs": args.input, "replicate": args.replicate, "seq_len": args.seq_len,
                         "shard_mb": args.shard_mb, "batch_size": BATCH_SIZE, "repeat": args.repeat},
            "prepare": {cfg.tokenizer.split(":")[0]: bench_prepare(cfg, out / f"prepare-{k}", args.repeat)
                        for k, cfg in enumerate(configs)},
            "loader": bench_loader(out / "prepare-0" / "1 worker-0", out / "train-tokens.int32", args.repeat),
        }
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


def replicate(inputs: list[str], copies: int, directory: Path) -> list[str]:
    """``copies`` copies of every input file under ``directory`` (the inputs themselves when copies is 1)."""
    if copies == 1:
        return inputs
    for copy in range(copies):
        for i, path in enumerate(list_input_files(inputs)):
            target = directory / f"copy{copy}" / f"{i:05d}-{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return [str(directory)]


def machine() -> dict:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "python": platform.python_version(), "torch": torch.__version__}


def bench_prepare(cfg: PrepareConfig, out: Path, repeat: int) -> dict:
    """Train (or load) the tokenizer once, timed; then time each of ``RUNS`` ``repeat`` times."""
    start = time.perf_counter()
    train_tokenizer(cfg)
    train_s = time.perf_counter() - start
    runs = {label: [timed_prepare(cfg, out / f"{label}-{rep}", workers, tasks) for rep in range(repeat)]
            for label, workers, tasks in RUNS}
    manifests = [manifest for timed in runs.values() for _, manifest in timed]
    assert all(checksums(m) == checksums(manifests[0]) for m in manifests), "timed runs wrote different shards"
    splits = manifests[0]["splits"]
    text_mb = sum(s["text_bytes"] for s in splits.values()) / 1e6
    tokens = sum(s["document_tokens"] for s in splits.values())
    result: dict = {"tokenizer": cfg.tokenizer, "tokenizer_train_s": train_s, "text_mb": text_mb, "tokens": tokens,
                    "shards": len(checksums(manifests[0])), "train_sequences": splits["train"]["num_samples"],
                    "runs": {}}
    for label, workers, tasks in RUNS:
        median = statistics.median(seconds for seconds, _ in runs[label])
        rate = tokens / median
        result["runs"][label] = {"workers": workers * tasks, "seconds": median, "mb_per_s": text_mb / median,
                                 "tokens_per_s": rate, "tokens_per_s_per_worker": rate / (workers * tasks)}
    return result


def timed_prepare(cfg: PrepareConfig, out: Path, workers: int, tasks: int) -> tuple[float, dict]:
    """One preparation into a new directory seeded with the trained tokenizer and the matching config: a single
    job, or ``tasks`` tasks run side by side (forked processes) and then the merge."""
    run = dataclasses.replace(cfg, out=str(out), workers=workers)
    shutil.copytree(Path(cfg.out) / "tokenizer", out / "tokenizer")
    save_resolved(run, out, CONFIG_NAME)
    start = time.perf_counter()
    if tasks == 1:
        manifest = prepare(run)
    else:
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=prepare, args=(run,), kwargs={"task": Task(i, tasks)}) for i in range(tasks)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        assert all(proc.exitcode == 0 for proc in procs), "a task failed"
        manifest = merge(out)
    return time.perf_counter() - start, manifest


def checksums(manifest: dict) -> list[str]:
    return [shard["sha256"] for split in manifest["splits"].values() for shard in split["shards"]]


def write_flat(data: Path, path: Path) -> np.memmap:
    """Copy the train split, in sample order, into a flat (N, L) int32 file; return it opened read-only."""
    shards = TokenShards(data, "train")
    flat = np.memmap(path, np.int32, "w+", shape=(len(shards), shards.seq_len))
    for i in range(len(shards)):
        flat[i] = shards[i]
    flat.flush()
    return np.memmap(path, np.int32, "r", shape=flat.shape)


def memmap_batches(tokens: np.ndarray, batch_size: int, seed: int = 0, epoch: int = 0) -> Iterator[torch.Tensor]:
    """The reference reader: the loader's epoch order and batch size, as (B, L) long tensors."""
    steps = len(tokens) // batch_size
    order = epoch_order(len(tokens), seed, epoch, shuffle=True)[: steps * batch_size].reshape(steps, batch_size)
    for rows in order:
        yield torch.from_numpy(tokens[rows].astype(np.int64))


def loader_batches(data: Path, num_workers: int) -> Iterator[torch.Tensor]:
    return (batch["input_ids"] for batch in TokenLoader(data, "train", BATCH_SIZE, num_workers=num_workers))


def sequences_per_s(epoch: Callable[[], Iterable[torch.Tensor]], repeat: int) -> float:
    """Median over ``repeat`` full epochs; ``epoch()`` is built before the clock starts."""
    seconds, sequences = [], 0
    for _ in range(repeat):
        batches = epoch()
        start = time.perf_counter()
        sequences = sum(len(batch) for batch in batches)
        seconds.append(time.perf_counter() - start)
    return sequences / statistics.median(seconds)


def stream_batches(url: str, num_workers: int) -> Iterator[dict]:
    return iter(StreamLoader(url, "train", BATCH_SIZE, num_workers=num_workers))


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """``python -m http.server`` on 127.0.0.1 serving ``directory``; yields its base URL."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory",
                             str(directory)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = re.search(r"port (\d+)", proc.stdout.readline()).group(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def bench_loader(data: Path, flat_path: Path, repeat: int) -> dict:
    """The random-access loader and the streaming one over loopback HTTP, against a flat memmap reader."""
    tokens = write_flat(data, flat_path)
    for _, ours, ref in zip(range(CHECKED_BATCHES), loader_batches(data, 0), memmap_batches(tokens, BATCH_SIZE)):
        assert ours.dtype == ref.dtype == torch.long and torch.equal(ours, ref), "loader and memmap batches differ"
    memmap = sequences_per_s(lambda: memmap_batches(tokens, BATCH_SIZE), repeat)
    result: dict = {"epoch_sequences": len(tokens) // BATCH_SIZE * BATCH_SIZE, "memmap_seq_per_s": memmap,
                    "num_workers": {}, "stream_num_workers": {}}
    for workers in LOADER_WORKERS:
        rate = sequences_per_s(lambda: loader_batches(data, workers), repeat)
        result["num_workers"][workers] = {"seq_per_s": rate, "vs_memmap": rate / memmap}
    shards = TokenShards(data, "train")
    with http_server(data.parent) as base:
        url = f"{base}/{urllib.parse.quote(data.name)}"
        for _, batch in zip(range(CHECKED_BATCHES), stream_batches(url, 0)):
            assert torch.equal(batch["input_ids"], torch.from_numpy(shards.read(batch["index"].tolist())).long()), \
                "streamed batches differ from the shards"
        for workers in LOADER_WORKERS:
            rate = sequences_per_s(lambda: (b["input_ids"] for b in stream_batches(url, workers)), repeat)
            result["stream_num_workers"][workers] = {"seq_per_s": rate, "vs_memmap": rate / memmap}
    return result


def markdown(results: dict) -> str:
    m, s, ld = results["machine"], results["settings"], results["loader"]
    first = next(iter(results["prepare"].values()))
    rows = [
        ("machine", f"{m['cpu']}, os.cpu_count() = {m['cpu_count']}"),
        ("date (UTC)", m["date_utc"]),
        ("python / torch", f"{m['python']} / {m['torch']}"),
        ("data", f"{s['replicate']} x {', '.join(Path(i).name for i in s['inputs'])}: {first['text_mb']:.2f} MB text, "
                 f"shards of ~{s['shard_mb']} MB, sequences of L={s['seq_len']}"),
    ]
    for kind, p in results["prepare"].items():
        rows.append((f"{kind}: tokenizer ({p['tokenizer'].split('/')[-1]})",
                     f"{p['tokens']:,} tokens, {p['shards']} shards, trained or loaded in {p['tokenizer_train_s']:.2f} s"))
        for label, r in p["runs"].items():
            rows.append((f"{kind}: prepare, {label}", f"{r['seconds']:.2f} s, {r['mb_per_s']:.2f} MB/s, "
                         f"{r['tokens_per_s']:,.0f} tokens/s ({r['tokens_per_s_per_worker']:,.0f} per worker)"))
        best = max(r["tokens_per_s_per_worker"] for r in p["runs"].values())
        rows.append((f"{kind}: {OWT_TOKENS / 1e9:.0f}B tokens on 64 workers at the best per-worker rate",
                     f"{OWT_TOKENS / (64 * best) / 60:.1f} min"))
    rows.append((f"np.memmap reference, B={s['batch_size']}", f"{ld['memmap_seq_per_s']:,.0f} sequences/s"))
    for workers, r in ld["num_workers"].items():
        rows.append((f"TokenLoader, num_workers={workers}, B={s['batch_size']}",
                     f"{r['seq_per_s']:,.0f} sequences/s ({r['vs_memmap']:.3g} x memmap)"))
    for workers, r in ld["stream_num_workers"].items():
        rows.append((f"StreamLoader over loopback HTTP, num_workers={workers}, B={s['batch_size']}",
                     f"{r['seq_per_s']:,.0f} sequences/s ({r['vs_memmap']:.3g} x memmap)"))
    lines = [f"Medians of {s['repeat']} runs; loader figures are one epoch of {ld['epoch_sequences']:,} sequences.",
             "", "| measure | result |", "|---|---|"]
    return "\n".join(lines + [f"| {name} | {value} |" for name, value in rows])


if __name__ == "__main__":
    sys.exit(main())
