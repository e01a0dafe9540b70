"""Per-rank memory of a training config: parameters, gradients, AdamW state and activations of every model.

``python -m pipeline plan-memory --config FILE [--set k=v] [--world 8] [--tp T] [--device-gib 80] [--out FILE]``
plans one config; ``--paper-table`` plans the paper's sizes as distillation runs on 8 x 80 GiB; with neither,
``[--sizes small medium large] [--vocab 50257] [--world 8]`` tabulates one trainable DiT's parameters + AdamW.

The parameter count of one tensor-parallel rank comes from real modules built on the meta device (megatron-core's
shards for the table, ``ShardShapes`` for the planner: the tests pin the two to the same count). What ZeRO keeps
per rank on top of it (fp32 master weights, as this pipeline trains; bf16 is autocast only), as measured with
``launch/bench/bench_pretrain.py`` and read in DeepSpeed 0.19's ``stage3.py`` / ``stage_1_and_2.py``:
- stage 0: parameters (4 bytes), gradients (4) and AdamW's two moments (8);
- stages 1 and 2: the parameters (4 bytes), plus an fp32 partition of the parameters and the moments
  (12 bytes) divided over the D data-parallel ranks; gradients whole under stage 1, divided under stage 2;
- stage 3: parameters, gradients and moments divided over D (4 + 4 + 8 bytes / D): the optimiser's fp32
  partition is the parameter partition itself when the weights are fp32, so it costs nothing more.
Activations are what autograd saves for backward, counted while the real modules run on the meta device.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from data_prep.config import ConfigError, from_dict
from models.didi import entropy, forward_kl, jeffreys, mixture_log_likelihood
from models.diffusion import LogLinearSchedule, nelbo_per_token, subs_log_probs
from models.discriminator import Discriminator
from models.dit import DiT, latent_shape
from models.layers import DenseLayers, Role, TokenEmbedding, ZeroLinear
from models.sizes import SIZES
from models.tensor_parallel import padded
from pipeline.config import Config, bf16_compute, check_world, dit_for, load_config

FP32 = 4  # bytes of an fp32 parameter, gradient or moment
GiB = 2**30
OPTIMISER_BYTES = 12  # fp32 parameters (or their fp32 partition) + AdamW's exp_avg and exp_avg_sq
NOT_COUNTED = ("Not counted: communication buffers (ZeRO buckets, gathered ZeRO-3 layers, all-reduce), "
               "allocator fragmentation, the CUDA context and kernels' temporary workspace.")


class RankShapes:
    """Stands in for a tensor-parallel process group of ``size`` ranks: enough to build rank ``rank``'s shards."""

    def __init__(self, size: int, rank: int = 0):
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


class ShardShapes(DenseLayers):
    """Plain layers with one tensor-parallel rank's shapes (megatron's split of ``MegatronLayers``), so a forward
    on the meta device gives that rank's activations without the collectives megatron's layers need."""

    def __init__(self, tensor_parallel: int):
        self.size = tensor_parallel

    def linear(self, in_features: int, out_features: int, bias: bool, role: Role, zero_init: bool = False) -> nn.Module:
        if role in ("column", "qkv"):
            out_features //= self.size
        elif role == "row":  # the bias is added after the all-reduce: whole on every rank
            in_features //= self.size
        return super().linear(in_features, out_features, bias, role, zero_init)

    def embedding(self, num_embeddings: int, dim: int) -> nn.Module:
        return TokenEmbedding(padded(num_embeddings, self.size) // self.size, dim)

    def vocab_projection(self, dim: int, num_outputs: int) -> nn.Module:
        return ZeroLinear(dim, padded(num_outputs, self.size) // self.size, bias=True)

    def local_heads(self, heads: int) -> int:
        return heads // self.size


def shard_parameters(size: str, vocab_size: int, tensor_parallel: int) -> int:
    """Parameters held by one tensor-parallel rank (every rank holds the same count; the vocabulary is padded)."""
    dims = SIZES[size]
    if tensor_parallel == 1:
        layers = None
    else:
        from models.tensor_parallel import MegatronLayers

        if not dist.is_initialized():  # megatron's layers read the group's size only inside a process group
            store = Path(tempfile.mkdtemp()) / "rendezvous"
            dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        layers = MegatronLayers(RankShapes(tensor_parallel))
    with torch.device("meta"):
        model = DiT(vocab_size, dims.hidden_size, dims.num_layers, dims.num_heads, dims.cond_dim, layers=layers)
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------- byte rules


@dataclass(frozen=True)
class ModelMemory:
    """Bytes one rank holds for one co-hosted model (``host``: CPU memory, not on the device)."""

    name: str
    parameters: float
    gradients: float = 0.0
    optimiser: float = 0.0
    activations: float = 0.0
    host: float = 0.0

    @property
    def device(self) -> float:
        return self.parameters + self.gradients + self.optimiser + self.activations


def replica_bytes(parameters: int, zero_stage: int, data_parallel: int) -> float:
    """fp32 copies of ``parameters`` (frozen weights, an EMA shadow): ZeRO-3 keeps only this rank's partition."""
    return FP32 * parameters / (data_parallel if zero_stage == 3 else 1)


def engine_bytes(trainable: int, frozen: int, zero_stage: int, data_parallel: int) -> tuple[float, float, float]:
    """(parameters, gradients, AdamW state) bytes per rank of a DeepSpeed engine (see the module docstring)."""
    parameters = replica_bytes(trainable + frozen, zero_stage, data_parallel)
    gradients = FP32 * trainable / (data_parallel if zero_stage >= 2 else 1)
    if zero_stage == 0:
        optimiser = 2.0 * FP32 * trainable
    elif zero_stage == 3:
        optimiser = 2.0 * FP32 * trainable / data_parallel
    else:
        optimiser = OPTIMISER_BYTES * trainable / data_parallel
    return parameters, gradients, optimiser


def state_bytes(parameters: int, zero_stage: int, data_parallel: int) -> float:
    """Bytes per rank of the parameters and AdamW state of a model with ``parameters`` per tensor-parallel rank."""
    weights, _, optimiser = engine_bytes(parameters, 0, zero_stage, data_parallel)
    return weights + optimiser


# ----------------------------------------------------------------------------------------- activations


class MetaAutocast(TorchFunctionMode):
    """What a GPU run does that the meta device does not, for counting saved tensors: ``torch.autocast`` leaves
    meta tensors alone, so with ``dtype`` bf16 the inputs of the matrix products are cast here as CUDA's
    autocast casts them (the model upcasts its norms and log-softmax itself; ``torch.dot`` too, as CUDA's autocast
    does for the spectral norm's u · Wv, where CPU's leaves fp32 · bf16 operands that fail); and attention
    runs as the fused kernel (flash / memory-efficient on GPUs, flash on CPUs: q, k, v, output and log-sum-exp
    saved) instead of the math fallback meta picks, which would save the L x L scores."""

    LOWER_PRECISION = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm,
                       torch.addmm, torch.baddbmm, torch.dot}

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def _cast(self, x):
        return x.to(self.dtype) if isinstance(x, torch.Tensor) and x.dtype == torch.float32 else x

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = (self._cast(x) for x in args[:3])
            return torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, v, None, True, is_causal=kwargs.get("is_causal", False))[0]
        if func in self.LOWER_PRECISION:
            args = tuple(self._cast(x) for x in args)
        return func(*args, **kwargs)


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata  # views share it, also on the meta device (whose data pointers are all 0)


class SavedTensors:
    """Bytes of the storages autograd saves for backward (each once, parameters left out), split into the
    calls of DiT blocks (with the bytes of each call's input) and everything outside them, so that activation
    checkpointing can be applied: it keeps the block inputs and recomputes one block at a time."""

    def __init__(self, models: list[nn.Module]):
        # the seen tensors are kept alive, so that a freed storage's address is never taken for a new one's
        self.seen = {_storage(p): p for m in models for p in m.parameters()}
        self.outside, self.calls = 0, []  # calls: [input bytes, saved bytes] per block call
        self.current = None
        self.blocks = [block for m in models for block in getattr(m, "blocks", [])]

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage(t)
        if key not in self.seen:
            self.seen[key] = t
            if self.current is None:
                self.outside += t.untyped_storage().nbytes()
            else:
                self.current[1] += t.untyped_storage().nbytes()
        return t

    def _enter(self, block, args) -> None:
        self.current = [args[0].untyped_storage().nbytes(), 0]
        self.calls.append(self.current)

    def _leave(self, block, args, output) -> None:
        self.current = None

    @contextlib.contextmanager
    def recording(self):
        handles = [h for b in self.blocks for h in (b.register_forward_pre_hook(self._enter),
                                                   b.register_forward_hook(self._leave))]
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                yield self
        finally:
            for handle in handles:
                handle.remove()

    def kept(self, checkpointing: bool) -> float:
        """Bytes held from the forward to the backward; with checkpointing, the blocks keep only their inputs
        (those that take part in the backward)."""
        if not checkpointing:
            return float(self.outside + sum(saved for _, saved in self.calls))
        return float(self.outside + sum(inputs for inputs, saved in self.calls if saved))

    def recomputed(self, checkpointing: bool) -> float:
        """With checkpointing, the backward recomputes one block at a time: the largest block's saved bytes."""
        return float(max((saved for _, saved in self.calls), default=0)) if checkpointing else 0.0

    def total(self, checkpointing: bool) -> float:
        return self.kept(checkpointing) + self.recomputed(checkpointing)


def saved_bytes(run: Callable[[], object], models: list[nn.Module], checkpointing: bool, dtype: torch.dtype) -> float:
    """Bytes autograd keeps for the backward of ``run()`` over the meta-device ``models``."""
    saved = SavedTensors(models)
    with saved.recording(), MetaAutocast(dtype):
        run()
    return saved.total(checkpointing)


def tokens(model: nn.Module, rows: int, seq_len: int) -> torch.Tensor:
    """Token ids on the model's device (the meta device when planning; a GPU when checking the plan)."""
    return torch.zeros(rows, seq_len, dtype=torch.long, device=next(model.parameters()).device)


def log_probs(model: nn.Module, z: torch.Tensor, latent: bool = False) -> torch.Tensor:
    """SUBS log-probabilities as the stages compute them, over this rank's columns (the last one stands in for
    [MASK]: a shape-only model's columns are local); ``latent``: with a ξ for each row, as the student takes it."""
    xi = (torch.zeros(z.shape[0], *latent_shape(model.latent_input, model.latent_dim, z.shape[1]), device=z.device)
          if latent else None)
    logits = model(z, torch.zeros(z.shape[0], device=z.device), xi)
    return subs_log_probs(logits, z, logits.shape[-1] - 1)


def rollout_log_probs(student: DiT, cfg: Config) -> list[torch.Tensor]:
    """The student's log-probabilities at each rollout state, as ``Distiller._log_probs`` makes them: the
    all-[MASK] first state is one row shared by all rows when the model is deterministic (dropout 0) and takes
    no ξ (the rows of a latent student differ by theirs)."""
    rows, length, latent = cfg.distill.rollout_rows, cfg.model.seq_len, bool(cfg.distill.latent)
    first_rows = 1 if cfg.model.dropout == 0 and not latent else rows
    out = [log_probs(student, tokens(student, first_rows, length), latent).expand(rows, -1, -1)]
    out += [log_probs(student, tokens(student, rows, length), latent) for _ in range(cfg.distill.steps - 1)]
    return out


def match_terms(student: DiT, cfg: Config) -> list[torch.Tensor]:
    """The mixture match's extra student rows (``Distiller.match_predictions``), whose graph lives until the
    student's backward: M at the all-[MASK] state (``latent_match_at: first``) or M per rollout row at its matched
    state (every). Without a latent the match reads the rollout's own predictions: nothing more."""
    c, length = cfg.distill, cfg.model.seq_len
    if not (c.latent_match and c.latent):
        return []
    rows = c.latent_match_draws * (1 if c.latent_match_at == "first" else c.rollout_rows)
    lp = log_probs(student, tokens(student, rows, length), latent=True)
    if c.latent_match_at == "every":
        lp = lp.view(c.rollout_rows, c.latent_match_draws, *lp.shape[1:])
    fill = tokens(student, c.rollout_rows, length)
    return [mixture_log_likelihood(lp, fill, torch.ones_like(fill, dtype=torch.bool))]


def student_terms(student: DiT, cfg: Config) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The rollout and the student loss's KL, entropy and match terms: (teacher targets, shaped as the
    log-probs; the terms, whose graphs live until the student's backward)."""
    c, lps = cfg.distill, rollout_log_probs(student, cfg)
    mask = torch.ones(lps[0].shape[:2], dtype=torch.bool, device=lps[0].device)
    targets = [lp.detach() for lp in lps]
    kl = forward_kl if c.kl == "forward" else (lambda t, p, m: jeffreys(t, p, m, c.jeffreys_beta))
    terms = [term for t, lp in zip(targets, lps) for term in (kl(t, lp, mask), entropy(lp, mask))]
    return targets, terms + match_terms(student, cfg)


def target_bytes(targets: list[torch.Tensor]) -> float:
    """The teacher's fp32 targets live from the teacher phase to the student's loss (shared storages once)."""
    return float(sum({_storage(t): t.untyped_storage().nbytes() for t in targets}.values()))


def pretrain_pass(model: DiT, cfg: Config) -> torch.Tensor:
    """One micro-batch of the NELBO: the forward and the log-softmax over the vocabulary."""
    z = tokens(model, cfg.data.batch_size, cfg.model.seq_len)
    t = torch.full((z.shape[0],), 0.5, device=z.device)
    return nelbo_per_token(log_probs(model, z), z, z, t, cfg.model.vocab_size, LogLinearSchedule()).sum()


def discriminator_pass(disc: Discriminator, cfg: Config) -> torch.Tensor:
    """The discriminator's training forward: real and fake rows in one batch (``Distiller.iteration``)."""
    z = tokens(disc, 2 * cfg.distill.rollout_rows, cfg.model.seq_len)
    return disc(z, torch.ones(z.shape[0], device=z.device)).float()


# ----------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class MemoryPlan:
    """Per-rank bytes of every co-hosted model of a config, and whether they fit a device."""

    setting: str
    models: tuple[ModelMemory, ...]
    device_bytes: float | None = None

    @property
    def total(self) -> float:
        return sum(m.device for m in self.models)

    @property
    def host(self) -> float:
        return sum(m.host for m in self.models)

    @property
    def activations(self) -> float:
        return sum(m.activations for m in self.models)

    @property
    def fits(self) -> bool | None:
        return None if self.device_bytes is None else self.total <= self.device_bytes


def meta_dit(cfg: Config, dropout: float, latent: bool = False) -> DiT:
    """The config's DiT with one tensor-parallel rank's shapes, on the meta device (checkpointing is applied
    when counting, see ``SavedTensors``); ``latent``: with the student's ξ input (``distill.latent``)."""
    m = cfg.model
    layers = ShardShapes(m.tensor_parallel) if m.tensor_parallel > 1 else None
    options = dict(latent_dim=cfg.distill.latent, latent_input=cfg.distill.latent_input) if latent else {}
    with torch.device("meta"):
        return dit_for(m, dropout=dropout, causal=m.causal, layers=layers, **options)


def count(model: nn.Module, trainable: bool) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad == trainable)


def activation_dtype(cfg: Config, on_gpu: bool) -> torch.dtype:
    """bf16 where the run autocasts (``train.precision`` bf16, or auto on a GPU), else fp32."""
    return torch.bfloat16 if bf16_compute(cfg, "cuda" if on_gpu else "cpu") else torch.float32


def trained_memory(name: str, model: nn.Module, zero: int, dp: int, activations: float) -> ModelMemory:
    """A trainable engine's bytes: its optimiser sees only the parameters that require grad."""
    return ModelMemory(name, *engine_bytes(count(model, True), count(model, False), zero, dp), activations)


def pretrain_models(cfg: Config, dp: int, dtype: torch.dtype) -> tuple[ModelMemory, ...]:
    """The trained DiT and its EMA shadow."""
    zero, model = cfg.train.zero_stage, meta_dit(cfg, cfg.model.dropout)
    act = saved_bytes(lambda: pretrain_pass(model, cfg), [model], cfg.model.activation_checkpointing, dtype)
    return (trained_memory("model", model, zero, dp, act),
            ModelMemory("ema", replica_bytes(count(model, True), zero, dp)))


def distill_models(cfg: Config, dp: int, dtype: torch.dtype) -> tuple[ModelMemory, ...]:
    """Teacher, student, EMA student and discriminator (``pipeline.stages.distill.build_distiller``). The student's
    rollout graph lives through the discriminator's step up to the student's backward, so both activations
    count at once (the student's loss terms and the discriminator's graph never coexist: a slight overcount)."""
    zero, checkpointing = cfg.train.zero_stage, cfg.model.activation_checkpointing
    student, targets = meta_dit(cfg, cfg.model.dropout, latent=True), []
    student_act = saved_bytes(lambda: targets.extend(student_terms(student, cfg)[0]), [student], checkpointing,
                              dtype)
    with torch.device("meta"):
        disc = Discriminator(meta_dit(cfg, cfg.model.dropout), cfg.distill.unfreeze_blocks, cfg.distill.sigma_to)
    disc_act = saved_bytes(lambda: discriminator_pass(disc, cfg), [disc], checkpointing, dtype)
    teacher_zero = 3 if zero == 3 else 0
    teacher = replica_bytes(count(meta_dit(cfg, 0.0), True), teacher_zero, dp)  # no ξ input
    offload = cfg.distill.teacher_offload
    return (ModelMemory("teacher", 0.0 if offload else teacher, activations=target_bytes(targets),
                        host=teacher if offload else 0.0),
            trained_memory("student", student, zero, dp, student_act),
            ModelMemory("ema", replica_bytes(count(student, True), zero, dp)),
            trained_memory("discriminator", disc, zero, dp, disc_act))


def describe(cfg: Config, world_size: int, dtype: torch.dtype) -> str:
    """One line of what was planned, so that a printed plan says which run it is about."""
    m, tp = cfg.model, cfg.model.tensor_parallel
    c = cfg.distill
    rows = (f"batch {cfg.data.batch_size}" if cfg.stage == "pretrain"
            else f"rollout {c.rollout_rows} rows (G = {c.group_size})")
    if cfg.stage == "distill" and c.latent:
        rows += f", latent ξ ({c.latent_input}, {c.latent})" + (
            f", the {c.latent_match_at}-step match of {c.latent_match_draws} draws" if c.latent_match else "")
    offload = ", teacher offloaded" if cfg.stage == "distill" and c.teacher_offload else ""
    return (f"{cfg.stage}, {m.size or 'custom'} DiT ({m.hidden_size} x {m.num_layers}), V = {m.vocab_size}, "
            f"L = {m.seq_len}, {rows} per rank; {world_size} ranks = TP {tp} x DP {world_size // tp}, "
            f"ZeRO-{cfg.train.zero_stage}{offload}, activation checkpointing "
            f"{'on' if m.activation_checkpointing else 'off'}, {'bf16' if dtype == torch.bfloat16 else 'fp32'} "
            "activations")


def plan(cfg: Config, world_size: int, device_bytes: float | None = None, on_gpu: bool = True) -> MemoryPlan:
    """Per-rank memory of the config's stage on ``world_size`` ranks (ZeRO over world / tensor-parallel ranks);
    ``on_gpu`` resolves ``train.precision: auto`` (bf16 autocast on a GPU, fp32 on CPU)."""
    check_world(cfg, world_size)
    dtype, dp = activation_dtype(cfg, on_gpu), world_size // cfg.model.tensor_parallel
    models = (pretrain_models if cfg.stage == "pretrain" else distill_models)(cfg, dp, dtype)
    return MemoryPlan(describe(cfg, world_size, dtype), models, device_bytes)


def gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def fits_text(p: MemoryPlan) -> str:
    if p.fits is None:
        return "no device size given"
    return f"{'fits' if p.fits else 'does NOT fit'} {gib(p.device_bytes)} GiB"


def render(p: MemoryPlan) -> str:
    """The plan as a table in GiB per rank, with what it leaves out."""
    lines = [f"Per-rank memory plan (GiB): {p.setting}", "",
             "| model | parameters | gradients | optimiser | activations | device total | host (CPU) |",
             "|---|---|---|---|---|---|---|"]
    for m in p.models:
        cells = (m.parameters, m.gradients, m.optimiser, m.activations, m.device, m.host)
        lines.append(f"| {m.name} | " + " | ".join(gib(v) for v in cells) + " |")
    lines += [f"| **total** | | | | | **{gib(p.total)}** | {gib(p.host)} |", "",
              f"Total {gib(p.total)} GiB per rank: {fits_text(p)}.",
              "fp32 master weights and AdamW state; activations are the tensors autograd saves for the backward, "
              "counted on the meta device.", NOT_COUNTED]
    return "\n".join(lines) + "\n"


def plan_text(cfg: Config, world_size: int, device_gib: float | None = None) -> str:
    """``render(plan(...))`` with the device size in GiB (for ``python -m pipeline train --plan-memory``)."""
    return render(plan(cfg, world_size, None if device_gib is None else device_gib * GiB))


# ----------------------------------------------------------------------------------------- tables


def table(sizes: list[str], vocab_size: int, world: int) -> str:
    lines = [f"Per-rank parameters + AdamW state (GiB) of one trainable DiT on {world} ranks, V = {vocab_size}, "
             "fp32 weights; tensor-parallel shards counted from megatron-core modules built on the meta device.", "",
             "| size | tensor-parallel x data-parallel | parameters per rank | ZeRO-0 | ZeRO-1/2 | ZeRO-3 |",
             "|---|---|---|---|---|---|"]
    for size in sizes:
        for tp in (1, 2, 4, 8):
            if world % tp or SIZES[size].num_heads % tp:
                continue
            params, dp = shard_parameters(size, vocab_size, tp), world // tp
            cells = " | ".join(f"{state_bytes(params, stage, dp) / 2**30:.2f}" for stage in (0, 1, 3))
            lines.append(f"| {size} | {tp} x {dp} | {params / 1e6:,.1f}M | {cells} |")
    return "\n".join(lines) + "\n"


PAPER_LAYOUTS = (  # (tensor-parallel, ZeRO stage, teacher offload)
    (1, 3, False), (1, 3, True), (2, 3, False), (1, 0, False), (1, 1, False))
PAPER_RUNS = (  # (size, rollout rows per rank, activation checkpointing); 32 rows is the spec's default
    ("small", 8, False), ("medium", 8, False), ("large", 8, False), ("large", 8, True), ("large", 32, False),
    ("large", 32, True))


def paper_config(size: str, rollout: int, tp: int, zero: int, offload: bool, checkpointing: bool) -> Config:
    """A distillation config of the paper's setting (V = 50257, L = 1024, groups of 4 rollout rows)."""
    return from_dict(Config, {
        "stage": "distill", "data": {"path": "<planned>"},
        "model": {"size": size, "seq_len": 1024, "vocab_size": 50257, "tensor_parallel": tp,
                  "activation_checkpointing": checkpointing},
        "train": {"zero_stage": zero, "precision": "bf16"},
        "distill": {"teacher": "<planned>", "rollout_rows": rollout, "group_size": 4, "teacher_offload": offload}})


def paper_table(world: int = 8, device_gib: float = 80.0) -> str:
    """The paper's sizes as distillation runs on ``world`` x ``device_gib`` GiB, per rank."""
    lines = [f"Distillation per rank on {world} x {device_gib:g} GiB: V = 50257, L = 1024, groups of G = 4 rollout "
             "rows (the discriminator trains on twice the rollout rows: real and fake), unfreeze_blocks 4, "
             "dropout 0, bf16 autocast, fp32 master weights. GiB per rank; each model's column is its parameters "
             "+ gradients + optimiser state + activations (the teacher's: its fp32 targets, kept until the "
             "student's loss).", "",
             "| size | rollout rows | layout | checkpointing | teacher | student | EMA | discriminator | activations "
             "| total | host (teacher) | fits |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, rollout, checkpointing in PAPER_RUNS:
        for tp, zero, offload in PAPER_LAYOUTS:
            p = plan(paper_config(size, rollout, tp, zero, offload, checkpointing), world, device_gib * GiB)
            layout = f"TP {tp} x ZeRO-{zero}{' + offload' if offload else ''}"
            cells = [gib(m.device) for m in p.models] + [gib(p.activations), gib(p.total),
                                                         gib(p.host), "yes" if p.fits else "no"]
            lines.append(f"| {size} | {rollout} | {layout} | {'on' if checkpointing else 'off'} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines + ["", NOT_COUNTED]) + "\n"


# ----------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline plan-memory", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="plan this training config (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tp", type=int, help="tensor parallelism (sets model.tensor_parallel)")
    parser.add_argument("--device-gib", type=float, help="device memory per rank, GiB (plans say whether they fit)")
    parser.add_argument("--paper-table", action="store_true", help="the paper's sizes as distillation runs")
    parser.add_argument("--sizes", nargs="+", default=["small", "medium", "large"], choices=sorted(SIZES))
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--world", type=int, default=8)
    parser.add_argument("--out", help="also write the text here")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        if args.config:
            overrides = args.overrides + ([f"model.tensor_parallel={args.tp}"] if args.tp else [])
            text = plan_text(load_config(args.config, overrides), args.world, args.device_gib)
        elif args.paper_table:
            text = (f"Generated on {date.today()} by `python -m pipeline plan-memory {' '.join(argv)}`.\n\n"
                    + paper_table(args.world, args.device_gib or 80.0))
        else:
            text = table(args.sizes, args.vocab, args.world)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0

