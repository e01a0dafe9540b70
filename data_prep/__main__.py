"""``python -m data_prep prepare|verify``: the data-preparation CLI (the work is in ``prepare`` and ``verify``)."""
from __future__ import annotations

import argparse
import sys

from data_prep.documents import InputError
from data_prep.prepare import PrepareError, prepare, resolved
from data_prep.tokenizers import TokenizerError
from data_prep.verify import verify
from pipeline.config import ConfigError, PrepareConfig, apply_overrides, from_dict, to_yaml

import yaml

# CLI flag -> PrepareConfig field; flags given on the command line override the --config file.
FLAGS = {
    "input": "inputs", "out": "out", "tokenizer": "tokenizer", "seq_len": "seq_len", "workers": "workers",
    "val_fraction": "val_fraction", "min_doc_chars": "min_doc_chars", "jsonl_field": "jsonl_field",
    "shard_mb": "shard_mb", "spm_model_type": "spm_model_type", "strict": "strict",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description="Prepare token shards for training.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="tokenise inputs into webdataset shards with a manifest")
    p.add_argument("--config", help="YAML file with prepare settings (flags override it)")
    p.add_argument("--input", nargs="+", metavar="PATH", help="text/JSONL/FASTA files or directories (.gz too)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--tokenizer", help="spm:VOCAB | gpt2:RANKS_FILE | protein")
    p.add_argument("--seq-len", type=int, help="sequence length L, including [BOS] and [EOS]")
    p.add_argument("--workers", type=int, help="parallel tokenising processes")
    p.add_argument("--val-fraction", type=float, help="share of documents in the validation split")
    p.add_argument("--min-doc-chars", type=int, help="text files: minimum document size in characters")
    p.add_argument("--jsonl-field", help="JSONL: the field holding the text")
    p.add_argument("--shard-mb", type=float, help="text megabytes per shard")
    p.add_argument("--spm-model-type", help="bpe | unigram | char")
    p.add_argument("--strict", action="store_true", default=None, help="fail on unreadable files or bad records")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v = sub.add_parser("verify", help="re-check every shard's count and checksum against the manifest")
    v.add_argument("directory")
    return parser


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
    if args.command == "verify":
        problems, totals = verify(args.directory)
        for problem in problems:
            print(f"FAIL {problem}")
        if problems:
            return 1
        print(f"OK {args.directory}: {totals['shards']} shards, {totals['samples']} sequences match the manifest")
        return 0
    try:
        cfg = resolved(_prepare_config(args))
        print(to_yaml(cfg), end="")
        manifest = prepare(cfg)
    except (ConfigError, InputError, PrepareError, TokenizerError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary(manifest, cfg.out))
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


if __name__ == "__main__":
    sys.exit(main())
