"""``python -m data_prep prepare|tokenizer|merge|verify|synthetic|proteins|composition``: the data-preparation CLI
(the work is in ``prepare``, ``merge``, ``verify``, ``synthetic`` and ``proteins``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep import logs
from data_prep.config import ConfigError, PrepareConfig, apply_overrides, from_dict, to_yaml
from data_prep.documents import InputError
from data_prep.merge import merge
from data_prep.prepare import PrepareError, Task, prepare, resolved, train_tokenizer
from data_prep.proteins import ProteinError, composition_entropy, read_fasta, split_proteins
from data_prep.regime_chain import WINDOW, make_regime_chain
from data_prep.synthetic import (CHAIN_FASTA, CHAIN_JSON, STANDARD_AMINO_ACIDS, make_markov_chain, sample_records,
                                 write_synthetic)
from data_prep.tokenizers import TokenizerError
from data_prep.verify import verify_dataset

import yaml

# CLI flag -> PrepareConfig field; flags given on the command line override the --config file.
FLAGS = {
    "input": "inputs", "val_input": "val_inputs", "out": "out", "tokenizer": "tokenizer", "seq_len": "seq_len", "workers": "workers",
    "val_fraction": "val_fraction", "min_doc_chars": "min_doc_chars", "jsonl_field": "jsonl_field",
    "parquet_column": "parquet_column", "shard_mb": "shard_mb", "spm_model_type": "spm_model_type",
    "strict": "strict",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description="Prepare token shards for training.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="tokenise inputs into webdataset shards with a manifest")
    _prepare_flags(p)
    p.add_argument("--num-tasks", type=int, default=1, metavar="N", help="array job: the number of tasks")
    p.add_argument("--task-index", type=int, default=0, metavar="I", help="array job: this task, 0 … N-1")
    t = sub.add_parser("tokenizer", help="array job, first step: claim the output directory, train the tokenizer")
    _prepare_flags(t)
    g = sub.add_parser("merge", help="array job, last step: check every task's shards, write the manifest")
    g.add_argument("directory")
    v = sub.add_parser("verify", help="re-check every shard's count and checksum against the manifest")
    v.add_argument("directory")
    s = sub.add_parser("synthetic", help="sample a corpus from a known distribution and write the distribution too")
    kinds = s.add_subparsers(dest="kind", required=True)
    m = kinds.add_parser("markov", help="a sparse first-order Markov chain over the 20 standard amino acids")
    _chain_flags(m)
    g = kinds.add_parser("regime", help="a regime-switching chain: R sparse first-order chains over the 20 standard "
                                        "amino acids, the regime switching before a letter with probability ρ")
    _chain_flags(g)
    g.add_argument("--regimes", type=int, default=4,
                   help="R, the regimes (default 4: with 3 successors each a letter's successor sets cover about "
                        "half the alphabet, so a few letters tell the regime and transitions outside all of them "
                        "still count as invalid)")
    g.add_argument("--switch", type=float, default=0.05,
                   help="ρ, the probability of a switch before each letter, in (0, 1] (0 with one regime); default "
                        f"0.05: regimes last 20 letters on average, so a {WINDOW}-letter row holds about 3 switches; "
                        "letters a few apart mostly share a regime, the two ends of a row mostly do not")
    r = sub.add_parser("proteins", help="protein sequences to train.fasta + val.fasta, split by identity cluster")
    r.add_argument("--blast-db", nargs="+", default=[], metavar="PREFIX", help="BLAST protein databases (format 4)")
    r.add_argument("--fasta", nargs="+", default=[], metavar="PATH", help="FASTA files or directories")
    r.add_argument("--out", required=True, help="output directory: train.fasta, val.fasta, split.json")
    r.add_argument("--identity", type=float, default=0.3, help="cluster identity (no validation sequence above it)")
    r.add_argument("--val-fraction", type=float, default=0.05, help="share of clusters in validation")
    r.add_argument("--min-length", type=int, default=20, help="shorter sequences are skipped")
    r.add_argument("--max-length", type=int, default=1022, help="longer sequences are skipped (L - 2 fits a row)")
    r.add_argument("--max-sequences", type=int, default=0, help="keep this many (smallest content hash); 0: all")
    r.add_argument("--families", type=int, default=0, metavar="K",
                   help="keep only the members of the K largest families (then split them); 0: all")
    r.add_argument("--family-identity", type=float, default=0.3, metavar="F",
                   help="identity that clusters the families for --families (below --identity)")
    r.add_argument("--threads", type=int, default=2, help="mmseqs2 threads")
    r.add_argument("--strict", action="store_true", help="refuse letters outside the alphabet instead of skipping")
    c = sub.add_parser("composition", help="each FASTA's proteins, residues and composition entropy (nats per "
                                           "token, [EOS] included): the NELBO of a model that learned only that")
    c.add_argument("fasta", nargs="+")
    return parser


def _chain_flags(p: argparse.ArgumentParser) -> None:
    """The flags both synthetic families share."""
    p.add_argument("--out", required=True, help="output directory: chain.json (the chain) and chain.fasta")
    p.add_argument("--successors", type=int, default=3, help="preferred successors per letter (1-20)")
    p.add_argument("--records", type=int, default=400, help="FASTA records to sample")
    p.add_argument("--length", type=int, default=2000, help="letters per record")
    p.add_argument("--seed", type=int, default=0, help="draws the chain; the records are sampled with seed + 1")
    p.add_argument("--mass", type=float, default=0.999, help="probability the preferred successors share, in (0, 1]")


def _prepare_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with prepare settings (flags override it)")
    p.add_argument("--input", nargs="+", metavar="PATH",
                   help="text/JSONL/FASTA (.gz, .zst too) or Parquet files, or directories")
    p.add_argument("--val-input", nargs="+", metavar="PATH", help="files whose documents all go to validation")
    p.add_argument("--out", help="output directory")
    p.add_argument("--tokenizer", help="spm:VOCAB | gpt2:RANKS_FILE | protein")
    p.add_argument("--seq-len", type=int, help="sequence length L, including [BOS] and [EOS]")
    p.add_argument("--workers", type=int, help="parallel tokenising processes")
    p.add_argument("--val-fraction", type=float, help="share of documents in the validation split")
    p.add_argument("--min-doc-chars", type=int, help="text files: minimum document size in characters")
    p.add_argument("--jsonl-field", help="JSONL: the field holding the text")
    p.add_argument("--parquet-column", help="Parquet: the string column holding the text")
    p.add_argument("--shard-mb", type=float, help="text megabytes per shard")
    p.add_argument("--spm-model-type", help="bpe | unigram | char")
    p.add_argument("--strict", action="store_true", default=None, help="fail on unreadable files or bad records")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _prepare_config(args: argparse.Namespace) -> PrepareConfig:
    data, source = {}, "<command line>"
    if args.config:
        with open(args.config) as f:
            data, source = yaml.safe_load(f) or {}, args.config
    for flag, key in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            data[key] = value
    apply_overrides(data, args.overrides, PrepareConfig)
    return from_dict(PrepareConfig, data, source=source)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup()
    if args.command == "synthetic":
        return _synthetic(args)
    if args.command == "proteins":
        return _proteins(args)
    if args.command == "composition":
        try:
            for path in args.fasta:
                proteins, residues, entropy = composition_entropy(read_fasta([path], strict=False))
                print(f"{path}: {proteins:,} proteins, {residues:,} residues, composition entropy {entropy:.4f} nats")
        except (InputError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.command == "verify":
        problems, totals = verify_dataset(args.directory)
        for problem in problems:
            print(f"FAIL {problem}")
        if problems:
            return 1
        print(f"OK {args.directory}: {totals['shards']} shards, {totals['samples']} sequences match the manifest")
        return 0
    try:
        if args.command == "merge":
            manifest = merge(args.directory)
            print(summary(manifest, args.directory))
            return 0
        cfg = resolved(_prepare_config(args))
        print(to_yaml(cfg), end="")
        if args.command == "tokenizer":
            tok = train_tokenizer(cfg)
            print(f"tokenizer {tok.describe()['kind']} (V={tok.vocab_size}, fingerprint {tok.fingerprint}) in "
                  f"{Path(cfg.out) / 'tokenizer'}: now run the tasks (prepare --num-tasks N --task-index I)")
            return 0
        task = Task(args.task_index, args.num_tasks)
        result = prepare(cfg, task=task)
    except (ConfigError, InputError, PrepareError, TokenizerError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if task.count > 1:
        print(f"task {task.index} of {task.count}: built {len(result['built'])} of {len(result['units'])} shards; "
              f"when every task is done: python -m data_prep merge {cfg.out}")
    else:
        print(summary(result, cfg.out))
    return 0


def summary(manifest: dict, out: str) -> str:
    src = manifest["sources"]
    lines = [f"prepared {out}: tokenizer {manifest['tokenizer']['kind']} (V={manifest['vocab_size']}, "
             f"fingerprint {manifest['tokenizer']['fingerprint']}), seq_len {manifest['seq_len']}",
             f"  read {src['files_read']} files, {src['documents']} documents, {src['chars']:,} characters"]
    if src["skipped_files"] or src["skipped_records"]:
        lines.append(f"  skipped {len(src['skipped_files'])} files and {src['skipped_records']} records"
                     f" (see manifest.json 'sources')")
    for split, info in manifest["splits"].items():
        lines.append(f"  {split:5s}: {len(info['shards'])} shards, {info['num_samples']:,} sequences, "
                     f"{info['num_tokens']:,} tokens from {info['num_documents']} documents")
    return "\n".join(lines)


def _proteins(args: argparse.Namespace) -> int:
    try:
        split_proteins(args.blast_db, args.fasta, args.out, args.identity, args.val_fraction, args.min_length,
                       args.max_length, args.max_sequences, args.strict, args.threads, args.families,
                       args.family_identity)
    except (ProteinError, InputError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    """Write the chain's corpus, or accept an --out that already holds exactly it; anything else is exit 2."""
    try:
        _check_synthetic_flags(args)
        try:
            chain = (make_markov_chain(args.successors, args.seed, args.mass) if args.kind == "markov" else
                     make_regime_chain(args.regimes, args.switch, args.successors, args.seed, args.mass))
        except ValueError as err:  # with the flags in range, only mass 1 fails: no unique stationary distribution
            raise ValueError(f"--mass {args.mass} with --seed {args.seed}: {err}") from None
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    records = sample_records(chain, args.records, args.length, seed=args.seed + 1)
    out = Path(args.out)
    try:
        written = write_synthetic(out, chain, records)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    files = " ".join(str(out / name) for name in (CHAIN_FASTA, CHAIN_JSON))
    if not written:
        print(f"{out} already holds exactly this corpus ({files}); nothing written")
        return 0
    figures = (f"entropy rate {chain.entropy_rate:.6f} nats/letter" if args.kind == "markov" else
               f"joint (regime, letter) entropy rate {chain.joint_entropy_rate:.6f} nats/letter (an upper bound on "
               f"the letters'), letter bigram H(next | letter) {chain.conditional_entropy:.6f}, "
               f"{(WINDOW - 1) * chain.switch:.2f} expected switches per {WINDOW} letters")
    print(f"wrote {len(records)} records, {len(records) * args.length:,} letters, {figures}: {files}")
    return 0


def _check_synthetic_flags(args: argparse.Namespace) -> None:
    """Each bad value is a ValueError naming its flag."""
    k = len(STANDARD_AMINO_ACIDS)
    if not 1 <= args.successors <= k:
        raise ValueError(f"--successors must be between 1 and {k}, got {args.successors}")
    if not 0 < args.mass <= 1:
        raise ValueError(f"--mass must be in (0, 1], got {args.mass}")
    if args.successors == k and args.mass != 1:
        raise ValueError(f"--mass must be 1 when --successors {k} covers every letter, got {args.mass}")
    for flag in ("records", "length", "seed"):
        if getattr(args, flag) < (0 if flag == "seed" else 1):
            raise ValueError(f"--{flag} must be {'non-negative' if flag == 'seed' else 'positive'}, "
                             f"got {getattr(args, flag)}")
    if args.kind == "regime":
        if args.regimes < 1:
            raise ValueError(f"--regimes must be positive, got {args.regimes}")
        if args.regimes == 1 and args.switch != 0:
            raise ValueError(f"--switch must be 0 with --regimes 1 (there is no other regime), got {args.switch}")
        if args.regimes > 1 and not 0 < args.switch <= 1:
            raise ValueError(f"--switch must be in (0, 1] with several regimes (at 0 they never mix), "
                             f"got {args.switch}")


if __name__ == "__main__":
    sys.exit(main())
