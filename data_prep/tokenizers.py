"""One tokenizer interface over SentencePiece, GPT-2 BPE and a character-level protein alphabet.

Every tokenizer has ``vocab_size`` real tokens; ``[MASK]`` is id ``vocab_size`` (the model's extra output).
A tokenizer is saved as a directory (``tokenizer.json`` plus its model file) and identified by a
fingerprint: a hash of its kind, special ids and model bytes, checked by the loader against the model config.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm

from data_prep.atomic import atomic_write_bytes


class TokenizerError(ValueError):
    """A tokenizer could not be built, loaded or applied; the message says why."""


class Tokenizer:
    """Common interface: ``encode``, ``decode``, special ids, ``vocab_size``, ``mask_id``, ``fingerprint``."""

    kind: str
    model_file: str | None = None  # file inside the tokenizer directory, if any

    def __init__(self, vocab_size: int, bos_id: int, eos_id: int, pad_id: int, model_bytes: bytes):
        self.vocab_size, self.bos_id, self.eos_id, self.pad_id = vocab_size, bos_id, eos_id, pad_id
        self._model_bytes = model_bytes
        meta = f"{self.kind}|{vocab_size}|{bos_id}|{eos_id}|{pad_id}|".encode()
        self.fingerprint = hashlib.sha256(meta + model_bytes).hexdigest()[:32]

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            what = "[MASK]" if bad[0] == self.mask_id else "out of range"
            raise TokenizerError(f"cannot decode id {bad[0]} ({what}; vocabulary size {self.vocab_size})")
        return self._decode(ids)

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "kind": self.kind, "vocab_size": self.vocab_size, "mask_id": self.mask_id, "bos_id": self.bos_id,
            "eos_id": self.eos_id, "pad_id": self.pad_id, "fingerprint": self.fingerprint,
            "model_file": self.model_file,
        }

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` and the model file; the json goes last, so its presence means complete."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.model_file:
            atomic_write_bytes(directory / self.model_file, self._model_bytes)
        atomic_write_bytes(directory / "tokenizer.json", json.dumps(self.describe(), indent=1).encode())


SPM_LINE_CHARS = 1024  # at most 4 bytes each: within SentencePiece's 4,192-byte sentence limit


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece with lossless settings: identity normalisation, whitespace kept, byte fallback."""

    kind = "spm"
    model_file = "spm.model"

    def __init__(self, model_bytes: bytes):
        self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        sp = self._sp
        super().__init__(sp.get_piece_size(), sp.bos_id(), sp.eos_id(), sp.pad_id(), model_bytes)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts, num_threads=1)

    def _decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    @classmethod
    def train(cls, lines: Iterator[str], vocab_size: int, model_type: str, max_sentences: int) -> "SentencePieceTokenizer":
        """Train on an iterator of lines (no newlines inside); deterministic for the same lines. A line longer
        than SentencePiece takes (4,192 bytes) is given in pieces, instead of being dropped unseen."""
        spm.set_random_generator_seed(1234)
        buf = io.BytesIO()
        pieces = (line[i:i + SPM_LINE_CHARS] for line in lines for i in range(0, len(line), SPM_LINE_CHARS))
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=pieces, model_writer=buf, vocab_size=vocab_size, model_type=model_type,
                normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
                byte_fallback=True, allow_whitespace_only_pieces=True, split_digits=True,
                user_defined_symbols=["\n"], unk_id=0, bos_id=1, eos_id=2, pad_id=3,
                character_coverage=1.0 if model_type == "char" else 0.9995,
                input_sentence_size=max_sentences, shuffle_input_sentence=True, num_threads=1, minloglevel=2,
            )
        except RuntimeError as err:
            raise TokenizerError(f"SentencePiece training failed (vocabulary size {vocab_size}): {err}") from None
        return cls(buf.getvalue())


class GPT2Tokenizer(Tokenizer):
    """GPT-2 byte-level BPE from a local tiktoken-format ranks file; ``<|endoftext|>`` is BOS, EOS and PAD."""

    kind = "gpt2"
    model_file = "gpt2.tiktoken"

    def __init__(self, model_bytes: bytes):
        import tiktoken
        from tiktoken_ext.openai_public import r50k_pat_str

        ranks = parse_tiktoken_ranks(model_bytes)
        eot = len(ranks)
        self._enc = tiktoken.Encoding(
            name="gpt2-local", pat_str=r50k_pat_str, mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": eot}, explicit_n_vocab=eot + 1,
        )
        super().__init__(eot + 1, eot, eot, eot, model_bytes)

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts, num_threads=1)

    def _decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)


def parse_tiktoken_ranks(data: bytes) -> dict[bytes, int]:
    """Parse ``base64-token rank`` lines; ranks must be 0..n-1 and cover all 256 single bytes."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise TokenizerError(f"GPT-2 ranks file, line {n}: expected 'BASE64 RANK', got {line[:60]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError("GPT-2 ranks file: ranks are not the contiguous range 0..n-1")
    if any(bytes([b]) not in ranks for b in range(256)):
        raise TokenizerError("GPT-2 ranks file: not every single byte has a rank (not a byte-level BPE)")
    return ranks


class ProteinTokenizer(Tokenizer):
    """Character-level amino acids: 20 standard letters plus X, B, Z, U, O; ids 0-2 are PAD, BOS, EOS."""

    kind = "protein"
    ALPHABET = "ACDEFGHIKLMNPQRSTVWYXBZUO"

    def __init__(self):
        self._ids = {c: i + 3 for i, c in enumerate(self.ALPHABET)}
        super().__init__(len(self.ALPHABET) + 3, 1, 2, 0, self.ALPHABET.encode())

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as err:
            raise TokenizerError(f"protein tokenizer: character {err.args[0]!r} is not an amino-acid letter") from None

    def _decode(self, ids: list[int]) -> str:
        return "".join(self.ALPHABET[i - 3] for i in ids if i >= 3)


_KINDS = {cls.kind: cls for cls in (SentencePieceTokenizer, GPT2Tokenizer, ProteinTokenizer)}


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load a saved tokenizer directory and check it is the one its ``tokenizer.json`` describes."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "tokenizer.json").read_text())
    except FileNotFoundError:
        raise TokenizerError(f"no tokenizer.json in {directory}") from None
    except json.JSONDecodeError as err:
        raise TokenizerError(f"{directory / 'tokenizer.json'} is not valid JSON: {err}") from None
    cls = _KINDS.get(meta.get("kind"))
    if cls is None:
        raise TokenizerError(f"{directory / 'tokenizer.json'}: unknown tokenizer kind {meta.get('kind')!r}")
    if cls.model_file:
        try:
            tok = cls((directory / cls.model_file).read_bytes())
        except FileNotFoundError:
            raise TokenizerError(f"tokenizer file missing: {directory / cls.model_file}") from None
    else:
        tok = cls()
    if tok.fingerprint != meta.get("fingerprint"):
        raise TokenizerError(
            f"{directory}: tokenizer fingerprint {tok.fingerprint} does not match tokenizer.json "
            f"({meta.get('fingerprint')}); the model file was changed"
        )
    return tok


def build_tokenizer(spec: str, training_lines: Iterator[str], model_type: str = "bpe",
                    max_sentences: int = 2_000_000) -> Tokenizer:
    """Build the tokenizer named by ``spm:VOCAB``, ``gpt2:RANKS_FILE`` or ``protein``.

    ``training_lines`` is consumed only by ``spm``.
    """
    kind, _, arg = spec.partition(":")
    if kind == "spm":
        return SentencePieceTokenizer.train(training_lines, int(arg), model_type, max_sentences)
    if kind == "gpt2":
        return GPT2Tokenizer(Path(arg).read_bytes())
    if kind == "protein":
        return ProteinTokenizer()
    raise TokenizerError(f"unknown tokenizer spec {spec!r}: use spm:VOCAB, gpt2:RANKS_FILE or protein")

