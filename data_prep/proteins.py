"""A protein corpus split by sequence identity: BLAST databases or FASTA -> ``train.fasta`` + ``val.fasta``.

``python -m data_prep proteins --blast-db PREFIX ... [--fasta FILE ...] --out DIR``

Sequences are read (BLAST protein databases of format 4 are decoded directly, no BLAST tools needed), kept
when every letter is in the protein tokenizer's alphabet (others are counted and skipped; ``--strict``
refuses them) and the length is in [min_length, max_length], de-duplicated exactly, and optionally cut to the
``max_sequences`` with the smallest content hash (a sample that does not depend on input order). With
``families`` K, only the members of the K largest clusters at ``family_identity`` are kept: a small model learns
little from a diverse corpus beyond letter frequencies, more from a few large families. mmseqs2
clusters them at ``identity`` (``easy-cluster``, coverage 0.8); whole clusters go to validation, picked by the
hash of their representative, so no two splits share a cluster. A random split would put close homologues on both sides and
reward memorisation; the leak check then searches every validation sequence against the training split and
drops those with a hit at ``identity`` or above (clustering is greedy, so a few slip through). Records are
named by their content hash. ``split.json`` (counts, settings) is written last; a rerun with the same settings
reuses the split, other settings are refused.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import shutil
import struct
import subprocess
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from data_prep.atomic import atomic_path, atomic_write_bytes
from data_prep.documents import InputError, ReadStats, fasta_documents, list_input_files
from data_prep.tokenizers import ProteinTokenizer

log = logging.getLogger(__name__)

SPLIT = "split.json"
NCBISTDAA = "-ABCDEFGHIKLMNPQRSTVWXYZU*OJ"  # BLAST's protein alphabet: byte value -> letter
ALPHABET = set(ProteinTokenizer.ALPHABET)
SETTINGS_ADDED = {"families": 0, "family_identity": 0.3}  # settings newer than some split.json files: their defaults
MMSEQS_HELP = "install Debian's mmseqs2 (apt-get install mmseqs2) or put mmseqs on PATH"


class ProteinError(ValueError):
    """A protein corpus that cannot be split as asked; the message says why."""


@dataclass
class ProteinCounts:
    """What reading and filtering found; saved in ``split.json``."""

    read: int = 0
    outside_alphabet: int = 0
    first_outside_alphabet: str = ""
    too_short: int = 0
    too_long: int = 0
    duplicates: int = 0
    beyond_max_sequences: int = 0
    kept: int = 0
    families: int = 0  # with --families: the families kept
    family_sizes: list = field(default_factory=list)  # their sizes, largest first
    clusters: int = 0
    train: int = 0
    val: int = 0
    val_dropped_similar_to_train: int = 0
    residues: dict = field(default_factory=dict)  # split -> residues


def read_blast_db(prefix: str | Path) -> Iterator[str]:
    """The sequences of a BLAST protein database (``PREFIX.pin`` + ``PREFIX.psq``, format version 4), in order."""
    pin, psq = Path(f"{prefix}.pin"), Path(f"{prefix}.psq")
    for path in (pin, psq):
        if not path.is_file():
            raise InputError(f"{path}: not found (a BLAST protein database is PREFIX.pin + PREFIX.psq)")
    index = pin.read_bytes()
    try:
        version, kind = struct.unpack_from(">ii", index, 0)
        if version != 4 or kind != 1:
            raise InputError(f"{pin}: BLAST database version {version}, type {kind}: only protein databases of "
                             "format 4 are read; export others with blastdbcmd -entry all and pass --fasta")
        at = 8
        for _ in range(2):  # title, date
            at += 4 + struct.unpack_from(">i", index, at)[0]
        (count,) = struct.unpack_from(">i", index, at)
        at += 4 + 8 + 4  # count, total residues (little-endian), longest
        at += 4 * (count + 1)  # header offsets
        offsets = struct.unpack_from(f">{count + 1}i", index, at)
    except struct.error:
        raise InputError(f"{pin}: truncated BLAST index") from None
    data = psq.read_bytes()
    if offsets[-1] > len(data) + 1:
        raise InputError(f"{psq}: truncated ({len(data)} bytes, the index needs {offsets[-1]})")
    for start, end in zip(offsets, offsets[1:]):
        raw = data[start: end - 1]  # each sequence ends with a NUL separator
        if any(b >= len(NCBISTDAA) for b in raw):
            raise InputError(f"{psq}: byte outside BLAST's protein alphabet: not a protein database, or damaged")
        yield raw.decode("latin-1").translate(_NCBISTDAA_TABLE)


_NCBISTDAA_TABLE = {i: c for i, c in enumerate(NCBISTDAA)}


def read_fasta(paths: list[str], strict: bool) -> Iterator[str]:
    for path in list_input_files(paths):
        with open(path) as f:
            yield from fasta_documents(f, path, ReadStats(), strict)


def composition_entropy(sequences: Iterator[str]) -> tuple[int, int, float]:
    """(sequences, residues, H) with H the entropy in nats of the letters and one [EOS] per protein, as a row
    holds them: what a model that knows only the composition scores per token, the floor a teacher's NELBO must
    get below before its sampling steps can matter."""
    letters, proteins = Counter(), 0
    for seq in sequences:
        letters.update(seq)
        proteins += 1
    residues = sum(letters.values())
    total = residues + proteins
    frequencies = [n / total for n in (*letters.values(), proteins) if n]
    return proteins, residues, -sum(f * math.log(f) for f in frequencies)


def content_key(seq: str) -> str:
    return hashlib.sha256(seq.encode()).hexdigest()[:16]


def filtered(sequences: Iterator[str], counts: ProteinCounts, min_length: int, max_length: int, strict: bool,
             max_sequences: int) -> dict[str, str]:
    """key -> sequence of the sequences kept (alphabet, length, exact duplicates, the ``max_sequences`` cut)."""
    kept: dict[str, str] = {}
    for seq in sequences:
        counts.read += 1
        if not ALPHABET.issuperset(seq):
            if strict:
                bad = sorted(set(seq) - ALPHABET)
                raise ProteinError(f"sequence {counts.read} ({seq[:20]}…) has letters outside the protein alphabet "
                                   f"{bad} (strict mode; without --strict it is counted and skipped)")
            counts.outside_alphabet += 1
            counts.first_outside_alphabet = counts.first_outside_alphabet or seq[:60]
        elif len(seq) < min_length:
            counts.too_short += 1
        elif len(seq) > max_length:
            counts.too_long += 1
        elif (key := content_key(seq)) in kept:
            counts.duplicates += 1
        else:
            kept[key] = seq
    if max_sequences and len(kept) > max_sequences:
        counts.beyond_max_sequences = len(kept) - max_sequences
        kept = {k: kept[k] for k in sorted(kept)[:max_sequences]}
    counts.kept = len(kept)
    return kept


def mmseqs(*args: str) -> None:
    if shutil.which("mmseqs") is None:
        raise ProteinError(f"mmseqs not found: {MMSEQS_HELP}")
    done = subprocess.run(["mmseqs", *args, "-v", "1"], capture_output=True, text=True)
    if done.returncode:
        raise ProteinError(f"mmseqs {args[0]} failed ({done.returncode}): {(done.stderr or done.stdout)[-800:]}")


def write_fasta(path: Path, records: dict[str, str]) -> None:
    with open(path, "w") as f:
        f.writelines(f">{key}\n{seq}\n" for key, seq in records.items())


def cluster(records: dict[str, str], identity: float, work: Path, threads: int, mask: bool = True,
            cascade: bool = True) -> dict[str, str]:
    """member key -> representative key, mmseqs2 ``easy-cluster`` at ``identity`` and coverage 0.8; ``mask``:
    mmseqs2's low-complexity masking (off, a sequence of one repeated letter still has k-mers); ``cascade``:
    mmseqs2's three clustering steps of rising sensitivity, which make large sets fast; without it one step at
    the final sensitivity, at least as sensitive and, for a few hundred sequences, a third of the time (each
    step's prefilter costs about 2 s however few the sequences)."""
    write_fasta(work / "all.fasta", records)
    mmseqs("easy-cluster", str(work / "all.fasta"), str(work / "clu"), str(work / "tmp"), "--min-seq-id",
           str(identity), "-c", "0.8", "--mask", str(int(mask)), "--threads", str(threads),
           *([] if cascade else ["--cluster-steps", "1"]))
    with open(work / "clu_cluster.tsv") as f:
        return {member: rep for rep, member in (line.split() for line in f)}


def similar_to(queries: dict[str, str], targets: dict[str, str], identity: float, work: Path,
               threads: int) -> set[str]:
    """The query keys with a hit in ``targets`` at ``identity`` or above (coverage 0.8), by mmseqs2 search."""
    write_fasta(work / "queries.fasta", queries)
    write_fasta(work / "targets.fasta", targets)
    mmseqs("easy-search", str(work / "queries.fasta"), str(work / "targets.fasta"), str(work / "hits.m8"),
           str(work / "tmp"), "--min-seq-id", str(identity), "-c", "0.8", "--threads", str(threads))
    with open(work / "hits.m8") as f:
        return {line.split()[0] for line in f}


def validation_clusters(representative: dict[str, str], val_fraction: float) -> set[str]:
    """Representatives of the validation clusters: in the order of their content hash, each cluster joins while
    validation holds fewer than ``val_fraction`` of the sequences and it fits (a family larger than the room left
    stays in training), so the share is met however large the largest families are."""
    sizes: dict[str, int] = {}
    for rep in representative.values():
        sizes[rep] = sizes.get(rep, 0) + 1
    room, chosen = int(val_fraction * len(representative)), set()
    for rep in sorted(sizes):
        if sizes[rep] <= room:
            chosen.add(rep)
            room -= sizes[rep]
    return chosen


def largest_clusters(representative: dict[str, str], count: int) -> dict[str, int]:
    """Representative -> size of the ``count`` largest clusters, largest first; among equal sizes the smallest
    representative key first, so the choice does not depend on input order."""
    sizes: dict[str, int] = {}
    for rep in representative.values():
        sizes[rep] = sizes.get(rep, 0) + 1
    return {rep: sizes[rep] for rep in sorted(sizes, key=lambda rep: (-sizes[rep], rep))[:count]}


def split_proteins(blast_dbs: list[str], fastas: list[str], out: str | Path, identity: float = 0.3,
                   val_fraction: float = 0.05, min_length: int = 20, max_length: int = 1022,
                   max_sequences: int = 0, strict: bool = False, threads: int = 2, families: int = 0,
                   family_identity: float = 0.3, log=log.info) -> dict:
    """Write ``train.fasta``, ``val.fasta`` and ``split.json`` to ``out`` and return the split's record."""
    settings = {"blast_dbs": [str(Path(p).resolve()) for p in blast_dbs],
                "fastas": [str(Path(p).resolve()) for p in fastas], "identity": identity,
                "val_fraction": val_fraction, "min_length": min_length, "max_length": max_length,
                "max_sequences": max_sequences, "strict": strict, "families": families,
                "family_identity": family_identity}
    _check(settings)
    out = Path(out)
    if (out / SPLIT).exists():
        saved = json.loads((out / SPLIT).read_text())
        there = {**SETTINGS_ADDED, **saved["settings"]}  # a split.json from before them holds their defaults
        if there != settings:
            diff = "; ".join(f"{k}: {there.get(k)!r} there, {v!r} now" for k, v in settings.items()
                             if there.get(k) != v)
            raise ProteinError(f"{out} holds another split ({diff}); use another --out or remove it")
        log(f"{out} already holds this split: reusing it")
        return saved
    if shutil.which("mmseqs") is None:  # before the minutes of reading
        raise ProteinError(f"mmseqs not found: {MMSEQS_HELP}")
    counts = ProteinCounts()
    sequences = (s for db in blast_dbs for s in read_blast_db(db))
    records = filtered(itertools.chain(sequences, read_fasta(fastas, strict) if fastas else ()), counts, min_length,
                       max_length, strict, max_sequences)
    log(f"read {counts.read:,} sequences: kept {counts.kept:,} ({counts.outside_alphabet:,} outside the alphabet, "
        f"{counts.too_short:,} shorter than {min_length}, {counts.too_long:,} longer than {max_length}, "
        f"{counts.duplicates:,} duplicates, {counts.beyond_max_sequences:,} beyond --max-sequences)")
    if not records:
        raise ProteinError(f"no sequence left after filtering ({counts.read} read): check the inputs and lengths")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".mmseqs-") as tmp:
        work = Path(tmp)
        if families:
            records = keep_largest_families(records, families, family_identity, work / "families", threads,
                                            counts, log)
        representative = cluster(records, identity, work, threads)
        counts.clusters = len(set(representative.values()))
        val_clusters = validation_clusters(representative, val_fraction)
        val = {k: s for k, s in records.items() if representative[k] in val_clusters}
        train = {k: s for k, s in records.items() if k not in val}
        log(f"{counts.clusters:,} clusters at {identity:.0%} identity: {len(train):,} training and {len(val):,} "
            "validation sequences; searching validation against training")
        if val and train:
            leaked = similar_to(val, train, identity, work, threads)
            counts.val_dropped_similar_to_train = len(leaked)
            val = {k: s for k, s in val.items() if k not in leaked}
    counts.train, counts.val = len(train), len(val)
    counts.residues = {"train": sum(map(len, train.values())), "val": sum(map(len, val.values()))}
    for name, part in (("train", train), ("validation", val)):
        if not part:
            raise ProteinError(f"the {name} split is empty after clustering ({counts.clusters} clusters of "
                               f"{len(records)} sequences at {identity:.0%} identity, val_fraction {val_fraction}): "
                               "add sequences, or change --val-fraction or --identity; nothing written")
    for name, part in (("train.fasta", train), ("val.fasta", val)):
        with atomic_path(out / name) as tmp_path:
            write_fasta(tmp_path, part)
    record = {"settings": settings, "counts": asdict(counts)}
    atomic_write_bytes(out / SPLIT, json.dumps(record, indent=1).encode())
    log(f"wrote {out / 'train.fasta'} ({counts.train:,}) and {out / 'val.fasta'} ({counts.val:,}; "
        f"{counts.val_dropped_similar_to_train:,} dropped with a training hit at >= {identity:.0%} identity)")
    return record


def keep_largest_families(records: dict[str, str], families: int, family_identity: float, work: Path, threads: int,
                          counts: ProteinCounts, log) -> dict[str, str]:
    """The members of the ``families`` largest clusters at ``family_identity``, in key order (clustered in key
    order too, so neither the choice nor the split depends on input order)."""
    work.mkdir()
    records = dict(sorted(records.items()))
    representative = cluster(records, family_identity, work, threads)
    sizes = largest_clusters(representative, families)
    counts.families, counts.family_sizes = len(sizes), list(sizes.values())
    total = len(set(representative.values()))
    if total < families:
        log(f"only {total:,} families at {family_identity:.0%} identity, fewer than --families {families}: "
            "keeping them all")
    kept_records = {k: s for k, s in records.items() if representative[k] in sizes}
    log(f"kept the {len(sizes):,} largest of {total:,} families at {family_identity:.0%} identity: "
        f"{len(kept_records):,} sequences ({', '.join(f'{n:,}' for n in sizes.values())})")
    return kept_records


def _check(settings: dict) -> None:
    if not settings["blast_dbs"] and not settings["fastas"]:
        raise ProteinError("no input: give --blast-db PREFIX and/or --fasta FILE")
    if not 0 < settings["identity"] < 1:
        raise ProteinError(f"--identity {settings['identity']}: must be in (0, 1), e.g. 0.3")
    if not 0 < settings["val_fraction"] < 1:
        raise ProteinError(f"--val-fraction {settings['val_fraction']}: must be in (0, 1)")
    if not 1 <= settings["min_length"] <= settings["max_length"]:
        raise ProteinError(f"--min-length {settings['min_length']} and --max-length {settings['max_length']}: "
                           "need 1 <= min <= max")
    if settings["max_sequences"] < 0:
        raise ProteinError(f"--max-sequences {settings['max_sequences']}: must be >= 0 (0: all)")
    if settings["families"] < 0:
        raise ProteinError(f"--families {settings['families']}: must be >= 0 (0: every family)")
    if not 0 < settings["family_identity"] < 1:
        raise ProteinError(f"--family-identity {settings['family_identity']}: must be in (0, 1), e.g. 0.3")
    if settings["families"] and settings["identity"] <= settings["family_identity"]:
        raise ProteinError(f"--identity {settings['identity']} with --families: the split's --identity must be above "
                           f"--family-identity {settings['family_identity']}, else a family would go whole to one "
                           "side; e.g. --identity 0.5")
