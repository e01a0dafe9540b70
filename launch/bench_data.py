"""``python launch/bench_data.py``: throughput of data preparation and of the training loader, in one run.

Gives the numbers behind two questions, measured on the same machine in one run: how fast ``prepare`` turns
text into shards with 1 and with 2 workers, and what reading tar shards by random access (``TokenLoader``)
costs compared with the plainest reader of the same tokens, a flat ``np.memmap``. The SentencePiece
tokenizer is trained once and timed separately. Each timed ``prepare`` starts from a new directory that
already holds that tokenizer and its config, so it times reading, tokenising, wrapping and writing shards
only. Every timed configuration runs ``--repeat`` times and the table shows the median. This is a benchmark,
not a test. It only checks that the timed runs wrote the same shards and that both readers return the same
batches.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_prep.documents import list_input_files  # noqa: E402
from data_prep.prepare import CONFIG_NAME, _claim_output_dir, _tokenizer, prepare, resolved  # noqa: E402
from pipeline.config import PrepareConfig, save_resolved  # noqa: E402
from pipeline.runtime.data import TokenLoader, TokenShards, epoch_order  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "data_prep" / "corpus" / "shakespeare"
WORKERS = (1, 2)
LOADER_WORKERS = (0, 2)
BATCH_SIZE = 32
CHECKED_BATCHES = 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch/bench_data.py", description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", default=[str(CORPUS)], metavar="PATH",
                        help="text/JSONL/FASTA files or directories (default: the embedded Shakespeare corpus)")
    parser.add_argument("--out", help="empty or new scratch directory, kept afterwards (default: a temporary one)")
    parser.add_argument("--seq-len", type=int, default=128, help="sequence length L")
    parser.add_argument("--shard-mb", type=float, default=0.25, help="text megabytes per shard")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per configuration (median reported)")
    parser.add_argument("--replicate", type=int, default=8,
                        help="use this many copies of the input, so that worker start-up does not dominate")
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
        cfg = resolved(PrepareConfig(inputs=inputs, out=str(out / "tokenizer-run"), seq_len=args.seq_len,
                                     shard_mb=args.shard_mb))
        cfg.validate()
        results = {
            "machine": machine(),
            "settings": {"inputs": args.input, "replicate": args.replicate, "tokenizer": cfg.tokenizer, "seq_len": cfg.seq_len,
                         "shard_mb": cfg.shard_mb, "batch_size": BATCH_SIZE, "repeat": args.repeat},
            "prepare": bench_prepare(cfg, out, args.repeat),
            "loader": bench_loader(out / f"workers{WORKERS[0]}-0", out / "train-tokens.int32", args.repeat),
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
    """Train the tokenizer once (timed), then time ``prepare`` ``repeat`` times per worker count."""
    seed = Path(cfg.out)
    _claim_output_dir(seed, cfg)
    start = time.perf_counter()
    _tokenizer(seed, cfg, list_input_files(cfg.inputs), print)
    train_s = time.perf_counter() - start
    runs = {workers: [timed_prepare(cfg, seed, out / f"workers{workers}-{rep}", workers) for rep in range(repeat)]
            for workers in WORKERS}
    manifests = [manifest for timed in runs.values() for _, manifest in timed]
    assert all(checksums(m) == checksums(manifests[0]) for m in manifests), "timed runs wrote different shards"
    splits = manifests[0]["splits"]
    text_mb = sum(s["text_bytes"] for s in splits.values()) / 1e6
    tokens = sum(s["document_tokens"] for s in splits.values())
    result: dict = {"tokenizer_train_s": train_s, "text_mb": text_mb, "tokens": tokens,
                    "shards": len(checksums(manifests[0])), "train_sequences": splits["train"]["num_samples"],
                    "workers": {}}
    for workers, timed in runs.items():
        median = statistics.median(seconds for seconds, _ in timed)
        result["workers"][workers] = {"seconds": median, "mb_per_s": text_mb / median, "tokens_per_s": tokens / median}
    return result


def timed_prepare(cfg: PrepareConfig, seed: Path, out: Path, workers: int) -> tuple[float, dict]:
    """One ``prepare`` into a new directory seeded with the trained tokenizer and the matching config."""
    run = dataclasses.replace(cfg, out=str(out), workers=workers)
    shutil.copytree(seed / "tokenizer", out / "tokenizer")
    save_resolved(run, out, CONFIG_NAME)
    start = time.perf_counter()
    manifest = prepare(run)
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


def bench_loader(data: Path, flat_path: Path, repeat: int) -> dict:
    tokens = write_flat(data, flat_path)
    for _, ours, ref in zip(range(CHECKED_BATCHES), loader_batches(data, 0), memmap_batches(tokens, BATCH_SIZE)):
        assert ours.dtype == ref.dtype == torch.long and torch.equal(ours, ref), "loader and memmap batches differ"
    memmap = sequences_per_s(lambda: memmap_batches(tokens, BATCH_SIZE), repeat)
    result: dict = {"epoch_sequences": len(tokens) // BATCH_SIZE * BATCH_SIZE, "memmap_seq_per_s": memmap,
                    "num_workers": {}}
    for workers in LOADER_WORKERS:
        rate = sequences_per_s(lambda: loader_batches(data, workers), repeat)
        result["num_workers"][workers] = {"seq_per_s": rate, "vs_memmap": rate / memmap}
    return result


def markdown(results: dict) -> str:
    m, s, p, ld = results["machine"], results["settings"], results["prepare"], results["loader"]
    rows = [
        ("machine", f"{m['cpu']}, os.cpu_count() = {m['cpu_count']}"),
        ("date (UTC)", m["date_utc"]),
        ("python / torch", f"{m['python']} / {m['torch']}"),
        ("data", f"{s['replicate']} x {', '.join(Path(i).name for i in s['inputs'])}: {p['text_mb']:.2f} MB text, {p['tokens']:,} tokens, {p['shards']} shards of ~{s['shard_mb']} MB, "
                 f"{p['train_sequences']:,} train sequences of L={s['seq_len']}"),
        (f"SentencePiece training ({s['tokenizer']})", f"{p['tokenizer_train_s']:.2f} s"),
    ]
    for workers, r in p["workers"].items():
        rows.append((f"prepare, {workers} worker{'s' * (workers > 1)}",
                     f"{r['seconds']:.2f} s, {r['mb_per_s']:.2f} MB/s, {r['tokens_per_s']:,.0f} tokens/s"))
    rows.append((f"np.memmap reference, B={s['batch_size']}", f"{ld['memmap_seq_per_s']:,.0f} sequences/s"))
    for workers, r in ld["num_workers"].items():
        rows.append((f"TokenLoader, num_workers={workers}, B={s['batch_size']}",
                     f"{r['seq_per_s']:,.0f} sequences/s ({r['vs_memmap']:.3g} x memmap)"))
    lines = [f"Medians of {s['repeat']} runs; loader figures are one epoch of {ld['epoch_sequences']:,} sequences.",
             "", "| measure | result |", "|---|---|"]
    return "\n".join(lines + [f"| {name} | {value} |" for name, value in rows])


if __name__ == "__main__":
    sys.exit(main())
