"""The configs of the training and evaluation stages, typed YAML (``data_prep.config``): unknown keys, wrong types
and impossible combinations fail at load time with a message that names the key and the file, never deep inside a
run; the resolved config is printed and saved next to every output.

``python -m pipeline validate FILE [--set a.b=v ...]`` validates a training config and prints it resolved.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from data_prep.config import ConfigError, check_non_negative, check_positive, load_yaml, to_yaml

# ----------------------------------------------------------------------------------------------- schema


@dataclass
class RunConfig:
    """Where a run writes and how it is seeded."""

    name: str = "run"
    out_dir: str = "runs/default"
    seed: int = 0


@dataclass
class DataConfig:
    """The prepared dataset (output of ``python -m data_prep prepare``) and how it is batched."""

    path: str = ""  # a directory, or for streaming also http(s)://HOST/DIR, file://DIR or "pipe:CMD {}"
    batch_size: Optional[int] = None  # sequences per rank per micro-step; None: 8 (pretrain), rollout rows / G (distill)
    num_workers: int = 0  # DataLoader worker processes per rank
    source: Optional[Literal["local", "stream"]] = None  # None: stream when path is a URL or pipe:, else local
    shuffle_buffer: int = 10000  # stream: sequences held per rank for shuffling within the epoch's shard order
    retries: int = 3  # stream: extra attempts at a remote shard that fails or does not match its checksum

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("data.path: required (a directory written by `python -m data_prep prepare`)")
        if self.batch_size is not None:
            check_positive("data.batch_size", self.batch_size)
        check_non_negative("data.num_workers", self.num_workers)
        check_non_negative("data.shuffle_buffer", self.shuffle_buffer)
        check_non_negative("data.retries", self.retries)
        remote = is_remote(self.path)
        if self.source == "local" and remote:
            raise ConfigError(f"data.path: {self.path!r} is a URL; data.source: local reads a directory "
                              f"(use data.source: stream, or leave it unset)")
        if self.path.startswith("pipe:") and "{}" not in self.path:
            raise ConfigError(f"data.path: the pipe: command {self.path!r} needs {{}} where each file name goes, "
                              f"e.g. 'pipe:aws s3 cp s3://bucket/data/{{}} -'")

    @property
    def streaming(self) -> bool:
        return self.source == "stream" or (self.source is None and is_remote(self.path))


def is_remote(path: str) -> bool:
    """A ``pipe:`` command or a URL with a scheme (http, https, file, ...), not a plain path."""
    return path.startswith("pipe:") or "://" in path


@dataclass
class ModelConfig:
    """The DiT: a named size (``models.sizes``) whose dimensions may be overridden, and what it expects of
    its data (the loader refuses shards that disagree)."""

    size: Optional[str] = "tiny"  # unit | tiny | small | medium | large, or None with every dimension given
    hidden_size: Optional[int] = None
    num_layers: Optional[int] = None
    num_heads: Optional[int] = None
    cond_dim: Optional[int] = None
    dropout: float = 0.1
    seq_len: int = 1024
    vocab_size: int = 50257  # real tokens V; [MASK] is id V
    tokenizer_fingerprint: Optional[str] = None  # None: accept the dataset's tokenizer
    causal: bool = False  # an autoregressive LM on next-token loss: the in-domain judge of the evaluation
    tensor_parallel: int = 1  # ranks that split each layer (megatron-core); ZeRO runs over the rest (data-parallel)
    activation_checkpointing: bool = False  # recompute each block's activations in the backward (less memory)

    def validate(self) -> None:
        from models.sizes import SIZES

        if self.size is not None:
            if self.size not in SIZES:
                raise ConfigError(f"model.size: unknown size '{self.size}' (known: {', '.join(SIZES)})")
            for name, value in dataclasses.asdict(SIZES[self.size]).items():
                if getattr(self, name) is None:
                    setattr(self, name, value)
        for name in ("hidden_size", "num_layers", "num_heads", "cond_dim"):
            if getattr(self, name) is None:
                raise ConfigError(f"model.{name}: required when model.size is not given")
            check_positive(f"model.{name}", getattr(self, name))
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(f"model.hidden_size: {self.hidden_size} does not split into model.num_heads = "
                              f"{self.num_heads} heads of even size (rotary embedding)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: {self.dropout} must be in [0, 1)")
        if self.seq_len < 3:
            raise ConfigError(f"model.seq_len: {self.seq_len} is too small: a sequence is [BOS] + chunk + [EOS]")
        check_positive("model.vocab_size", self.vocab_size)
        check_positive("model.tensor_parallel", self.tensor_parallel)
        if self.num_heads % self.tensor_parallel:
            raise ConfigError(f"model.tensor_parallel: {self.tensor_parallel} does not divide model.num_heads = "
                              f"{self.num_heads} (each rank computes whole heads)")


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule: linear warm-up, then constant or decaying to 0 at max_steps."""

    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup_steps: int = 2500
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    grad_clip: float = 1.0  # 0 disables clipping

    def validate(self) -> None:
        check_positive("optim.lr", self.lr)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas: {self.betas} must be two numbers in [0, 1)")
        check_non_negative("optim.weight_decay", self.weight_decay)
        check_non_negative("optim.warmup_steps", self.warmup_steps)
        check_non_negative("optim.grad_clip", self.grad_clip)


@dataclass
class TrainConfig:
    """The training loop: length, distribution, precision, EMA and what happens every N steps."""

    max_steps: int = 1000  # optimizer steps
    grad_accum: int = 1  # micro-batches per optimizer step
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    ema: float = 0.9999
    ema_warmup: bool = True  # β_k = min(β, (1 + k) / (10 + k))
    t_min: float = 1e-3
    antithetic: bool = True
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 8  # validation batches per rank per evaluation
    sample_every: int = 500
    sample_steps: list[int] = field(default_factory=lambda: [128])  # sampler steps of the samples logged
    sample_count: int = 2
    # markov:CHAIN (a synthetic corpus's chain.json): the samples are also scored exactly and logged as exact/*
    exact_judge: Optional[str] = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # the newest complete checkpoints kept (older ones deleted); 0 keeps every one
    resume: Literal["fallback", "strict"] = "fallback"  # a damaged newest checkpoint: resume from an older one, or stop
    max_nonfinite: int = 5  # consecutive skipped steps (non-finite gradients) before the run stops
    # a loss that blows up while finite: before a checkpoint, a phase's mean loss since the previous one above this
    # many times the earlier windows' typical |mean| (at least 1) stops the run without saving; 0 turns it off
    max_loss_ratio: float = 100.0

    def validate(self) -> None:
        for name in ("max_steps", "grad_accum", "log_every", "eval_every", "eval_batches", "sample_every",
                     "sample_count", "checkpoint_every", "max_nonfinite"):
            check_positive(f"train.{name}", getattr(self, name))
        check_non_negative("train.keep_checkpoints", self.keep_checkpoints)
        check_non_negative("train.max_loss_ratio", self.max_loss_ratio)
        if not self.sample_steps:
            raise ConfigError("train.sample_steps: [] logs no samples; give at least one step count")
        check_sampling_steps("train.sample_steps", self.sample_steps)
        if self.exact_judge is not None:
            _exact_judge_spec("train.exact_judge", self.exact_judge, required=True)
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"train.ema: {self.ema} must be in [0, 1)")
        if not 0.0 < self.t_min < 1.0:
            raise ConfigError(f"train.t_min: {self.t_min} must be in (0, 1)")


@dataclass
class TrackingConfig:
    """Experiment tracking on rank 0: MLflow, or none."""

    backend: Literal["mlflow", "none"] = "mlflow"
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    experiment: str = "didi-instruct"
    parent_run: Optional[str] = None  # an MLflow run id: this run is its child (a sweep's point)
    tags: list[str] = field(default_factory=list)  # "key=value" tags of the run

    def validate(self) -> None:
        for tag in self.tags:
            if "=" not in tag or not tag.partition("=")[0]:
                raise ConfigError(f"tracking.tags: {tag!r} is not key=value")

    def tag_dict(self) -> dict[str, str]:
        tags = dict(tag.split("=", 1) for tag in self.tags)
        return {**tags, "mlflow.parentRunId": self.parent_run} if self.parent_run else tags


@dataclass
class DistillConfig:
    """DiDi-Instruct (spec §2–§5, options of §9); the defaults are the spec's."""

    teacher: str = ""  # a pre-training run directory, its checkpoints/ folder, one step_N folder, or a bundle
    # the techniques, each switchable for the paper's cumulative ablation (all on is DiDi-Instruct)
    intermediate_state: bool = True  # two-step rollout 1 → τ → t0 with matching at z_τ; off: one step 1 → t0
    rollout_steps: int = 2  # student steps of a rollout: 2 is the paper's; N ≥ 3 runs the uniform N-step grid
    # which positions each rollout step reveals (models/unmasking.py): random (MDLM's), dispersed[:D],
    # confidence, margin or entropy (those depend on the student; the policy gradient ignores that); the
    # converted student bundle samples in this order by default
    rollout_order: str = "random"
    coupled_time: bool = True  # the discriminator sees the rollout's τ; off: an independent t ~ Beta per row
    omega_weight: bool = True  # policy-gradient weight ω(t); off: 1
    regularisation: bool = True  # λ_KL·KL + λ_H·entropy terms; off: logged, not in the loss
    rollout_rows: int = 32  # student samples per rank per iteration, B' = B·G (B data rows per rank)
    group_size: int = 4  # G: consecutive rollout rows normalised together; groups never straddle ranks
    tau_a: float = 1.0  # τ ~ Beta(tau_a, tau_b), clamped to [0.02, 0.98]
    tau_b: float = 1.0
    tau_per: Literal["row", "group"] = "row"
    importance_weight: bool = False  # ω/π(τ) instead of ω
    t0: float = 1e-3  # end of the two-step rollout
    kl: Literal["forward", "jeffreys"] = "forward"
    jeffreys_beta: float = 1.0
    c1: float = 0.01
    c2: float = 0.01
    lambda_kl: float = 1.0
    lambda_h: float = 5e-4
    unfreeze_blocks: int = 4  # trainable last blocks of the discriminator's trunk
    sigma_to: Literal["trainable", "all"] = "trainable"  # discriminator blocks that see σ_τ
    real_side: Literal["data", "teacher"] = "data"  # what the discriminator learns to call real
    # where the discriminator's loss and the row reward average: the re-masked positions (the paper), or every
    # position of the corrupted row, the visible tokens too (our extension)
    discriminator_positions: Literal["masked", "all"] = "masked"
    teacher_sample_steps: int = 128  # sampler steps of the teacher's samples when real_side is teacher
    label_smoothing: float = 0.1
    reward_clip: float = 8.0
    advantage_clip: float = 3.0
    teacher_offload: bool = False  # ZeRO-3 only: keep the frozen teacher's parameters in CPU memory
    # what the policy gradient maximises: the discriminator's log density ratio (the method), or, a diagnostic on
    # a synthetic corpus, log p(x) − log P(x | order) with p train.exact_judge's chain (a perfect reward)
    reward: Literal["discriminator", "exact"] = "discriminator"
    # reward: exact: log q(x) estimated by a log-mean-exp over this many fresh teacher-forced unmasking trajectories
    # (K student forwards per rollout step, no grad); 0: log P(x | the rollout's own trajectory), which also
    # penalises the information the trajectory holds about x (spec §11)
    exact_reward_trajectories: int = 8
    # the latent-conditioned student (our extension, spec §11): ξ ~ N(0, I) of this many dimensions per rollout row
    # enters the student through a zero-initialised projection (0: off, the factorised student); drawn once per
    # sequence, afresh at every step, or for the first step only (0 afterwards: later steps factorised); the KL
    # at the all-[MASK] state on each ξ's prediction (conditional) or on the group's ξ-averaged one (marginal: ξ's
    # posterior there is its prior), conditional at the later states
    latent: int = 0
    latent_redraw: Literal["sequence", "step", "first"] = "sequence"
    # where W_ξ ξ enters: the embedding of every [MASK] position (mask), the same with a ξ of its own for each
    # position (positions: ξ is seq_len × latent), or the adaLN conditioning vector (which a teacher trained at
    # σ = 0 all but ignores)
    latent_input: Literal["condition", "mask", "positions"] = "condition"
    latent_kl: Literal["conditional", "marginal"] = "conditional"
    latent_lr_scale: float = 1.0  # the projection's learning rate as a multiple of optim.lr (a fresh layer)
    # the projection's initial entries ~ N(0, latent_init²); 0: zero, the student starts as the teacher exactly, but
    # then the policy gradient's expectation is 0 in the projection (ξ does not yet change x), so only noise moves it
    latent_init: float = 0.0
    # the weight of the first step's mixture match (0: off): minus the log-likelihood, under the student's ξ-mixture
    # at the all-[MASK] state, of the teacher's joint fill of the positions each row's first step reveals (drawn in
    # latent_match_substeps teacher steps); the signal that makes ξ coordinate a step's tokens. Without a latent it
    # is the product likelihood: the same fit for the factorised student (the control)
    latent_match: float = 0.0
    latent_match_substeps: int = 4
    latent_match_draws: int = 32  # M: the ξ of the mixture, fresh each iteration (one forward of M rows)
    # which step the match fits: the first (all [MASK], M rows shared by every rollout row), or every: each row one
    # of its steps, drawn uniformly (M rows per rollout row). At a later state ξ's posterior is its prior only when
    # ξ is drawn afresh there, so every needs latent_redraw: step
    latent_match_at: Literal["first", "every"] = "first"

    @property
    def steps(self) -> int:
        """Student steps of a rollout (1 without the intermediate state)."""
        return self.rollout_steps if self.intermediate_state else 1

    def validate(self) -> None:
        if self.group_size < 2:
            raise ConfigError(f"distill.group_size: G = {self.group_size}, but group normalisation needs G >= 2")
        check_positive("distill.rollout_rows", self.rollout_rows)
        if self.rollout_rows % self.group_size:
            raise ConfigError(f"distill.rollout_rows: {self.rollout_rows} rows per rank is not a multiple of "
                              f"distill.group_size = {self.group_size} (groups must not straddle ranks)")
        for name in ("tau_a", "tau_b", "jeffreys_beta", "reward_clip", "advantage_clip", "teacher_sample_steps"):
            check_positive(f"distill.{name}", getattr(self, name))
        for name in ("c1", "c2", "lambda_kl", "lambda_h"):
            check_non_negative(f"distill.{name}", getattr(self, name))
        check_non_negative("distill.unfreeze_blocks", self.unfreeze_blocks)
        check_non_negative("distill.exact_reward_trajectories", self.exact_reward_trajectories)
        check_non_negative("distill.latent", self.latent)
        check_positive("distill.latent_lr_scale", self.latent_lr_scale)
        check_non_negative("distill.latent_init", self.latent_init)
        check_non_negative("distill.latent_match", self.latent_match)
        check_positive("distill.latent_match_substeps", self.latent_match_substeps)
        check_positive("distill.latent_match_draws", self.latent_match_draws)
        for name, default in (("latent_kl", "conditional"), ("latent_redraw", "sequence"), ("latent_lr_scale", 1.0),
                              ("latent_init", 0.0), ("latent_input", "condition")):
            if not self.latent and getattr(self, name) != default:
                raise ConfigError(f"distill.{name}: {getattr(self, name)} sets how the student's latent ξ is used, "
                                  "but distill.latent is 0 (no latent); set distill.latent to its dimension, e.g. 16")
        for name, default in (("latent_match_substeps", 4), ("latent_match_draws", 32), ("latent_match_at", "first")):
            if not self.latent_match and getattr(self, name) != default:
                raise ConfigError(f"distill.{name}: {getattr(self, name)} sets the mixture match, but "
                                  "distill.latent_match is 0 (off); set its weight, e.g. 1")
        if self.latent_match_at == "every" and self.latent and self.latent_redraw != "step":
            raise ConfigError("distill.latent_match_at: every fits the student's ξ-mixture at later states, where a "
                              "ξ not drawn afresh is no longer independent of the state (or is 0); set "
                              "distill.latent_redraw: step")
        _order("distill.rollout_order", self.rollout_order)
        if self.rollout_steps < 2:
            raise ConfigError(f"distill.rollout_steps: {self.rollout_steps}; a rollout has at least 2 steps (the "
                              "one-step ablation is distill.intermediate_state: false)")
        if not self.intermediate_state and self.rollout_steps != 2:
            raise ConfigError(f"distill.intermediate_state: false is the one-step rollout, but distill.rollout_steps "
                              f"is {self.rollout_steps}")
        if not 0.0 < self.t0 < 0.02:
            raise ConfigError(f"distill.t0: {self.t0} must be in (0, 0.02), below the smallest τ")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"distill.label_smoothing: {self.label_smoothing} must be in [0, 0.5)")


# Where distillation's defaults differ from pre-training's (spec §3–§4); the YAML file may override each.
STAGE_DEFAULTS = {
    "pretrain": {"data": {"batch_size": 8}},
    "distill": {
        "model": {"dropout": 0.0},
        "optim": {"lr": 1e-6, "warmup_steps": 1000, "schedule": "linear", "grad_clip": 0.5},
        "discriminator_optim": {"lr": 1e-5, "warmup_steps": 1000, "schedule": "linear", "grad_clip": 1.0},
        "train": {"ema": 0.999, "checkpoint_every": 200, "sample_steps": [8, 16]},
    },
}
DISTILL_ONLY = ("distill", "discriminator_optim")


@dataclass
class Config:
    """Top-level training config; each stage reads the sections it needs (``optim`` is the trained model's:
    the teacher's in pre-training, the student's in distillation)."""

    stage: Literal["pretrain", "distill"] = "pretrain"
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    discriminator_optim: OptimConfig = field(default_factory=OptimConfig)

    def unread_sections(self) -> tuple[str, ...]:
        """The sections ``to_dict`` leaves out: pre-training reads none of distillation's."""
        return DISTILL_ONLY if self.stage == "pretrain" else ()

    @staticmethod
    def with_stage_defaults(data: dict) -> dict:
        """The raw config with its stage's defaults filled in under the given values."""
        stage = data.get("stage", "pretrain")
        stages = typing.get_args(typing.get_type_hints(Config)["stage"])
        if stage not in stages:
            raise ConfigError(f"'stage' must be one of {', '.join(stages)}, got {stage!r}")
        if stage == "pretrain" and (given := [key for key in DISTILL_ONLY if key in data]):
            raise ConfigError(f"sections {', '.join(DISTILL_ONLY)} belong to stage: distill, not pretrain "
                              f"(given: {', '.join(given)})")
        merged = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        for section, values in STAGE_DEFAULTS.get(stage, {}).items():
            if merged.get(section) is None:
                merged[section] = {}
            if isinstance(merged[section], dict):
                merged[section] = {**values, **merged[section]}
        return merged

    def validate(self) -> None:
        if self.stage != "distill":
            return
        if self.model.causal:
            raise ConfigError("model.causal: an autoregressive model cannot be distilled (it is a judge, not a "
                              "diffusion model)")
        if not self.distill.teacher:
            raise ConfigError("distill.teacher: required (a pre-training run directory, checkpoint or bundle)")
        rows, group = self.distill.rollout_rows, self.distill.group_size
        if self.data.batch_size is None:
            self.data.batch_size = rows // group
        elif self.data.batch_size * group != rows:
            raise ConfigError(f"data.batch_size: {self.data.batch_size} data rows per rank x distill.group_size "
                              f"{group} != distill.rollout_rows {rows} (leave data.batch_size out to derive it)")
        if self.distill.unfreeze_blocks > self.model.num_layers:
            raise ConfigError(f"distill.unfreeze_blocks: {self.distill.unfreeze_blocks} is more than the "
                              f"model's {self.model.num_layers} blocks")
        _order("distill.rollout_order", self.distill.rollout_order, self.model.seq_len)
        if self.distill.teacher_offload and self.train.zero_stage != 3:
            raise ConfigError("distill.teacher_offload: needs train.zero_stage: 3 (offload works on ZeRO-3 partitions)")
        if self.distill.reward == "exact" and self.train.exact_judge is None:
            raise ConfigError("distill.reward: exact scores the rollouts under a synthetic corpus's chain; set "
                              "train.exact_judge: markov:DIR")
        if self.train.grad_accum != 1:
            raise ConfigError("train.grad_accum: distillation takes one rollout per optimizer step (use 1; "
                              "raise distill.rollout_rows or the number of ranks instead)")


@dataclass
class EvaluateConfig:
    """``python -m pipeline evaluate``: samplers × step counts, judged side by side in one run (spec §7)."""

    teacher: str = ""  # teacher bundle
    student: Optional[str] = None  # distilled student bundle
    data: str = ""  # prepared dataset: its validation split is the reference row
    out: str = "runs/evaluate"
    teacher_steps: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128, 256, 512, 1024])
    student_steps: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    student_samplers: list[Literal["ancestral", "rgas"]] = field(default_factory=lambda: ["ancestral", "rgas"])
    # unmasking orders (models/unmasking.py): every teacher, student and control row is sampled in each of them
    orders: list[str] = field(default_factory=lambda: ["random"])
    num_samples: int = 64
    batch_size: int = 16
    seed: int = 0
    judge: str = "smollm2"  # smollm2 | a .gguf file | a transformers model directory | markov:CHAIN (exact)
    in_domain_judge: Optional[str] = None  # a judge bundle trained on this corpus (model.causal: true)
    judge_context: int = 1024
    judge_batch_size: int = 8
    bootstrap_rounds: int = 1000
    # Entropy-matched control (spec §7): per student sampler, the teacher at the temperature whose entropy
    # matches the student's at control_student_steps; a student that does not beat it has only sharpened.
    entropy_control: bool = True
    control_steps: Optional[int] = None  # the control's teacher steps; None: the largest of teacher_steps
    control_student_steps: int = 16  # must be one of student_steps
    control_search_steps: int = 32  # teacher steps while searching T (entropy barely depends on the steps)
    control_search_samples: int = 32
    control_search_rounds: int = 6  # bisection of log T over [0.1, 1]
    # With an exact judge (markov:CHAIN): the teacher at each of student_steps, at the temperature of this grid
    # with the lowest bigram TV (the best-temperature control); [] turns it off.
    exact_control_temperatures: list[float] = field(default_factory=lambda: [0.6, 0.7, 0.8, 0.9, 1.0])
    # With an exact judge: the plain sampler driven by the chain's exact posterior at each of teacher_steps (what a
    # perfect denoiser reaches at N steps; pipeline/measure/exact_denoiser.py)
    exact_denoiser: bool = True
    protein_threads: int = 2  # protein corpora: mmseqs2 threads for the diversity metric
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        if not self.teacher or not self.data:
            raise ConfigError("teacher and data: required (a teacher bundle and a prepared dataset)")
        for name in ("teacher_steps", "student_steps"):
            check_sampling_steps(name, getattr(self, name))
        check_sampling_steps("control_search_steps", [self.control_search_steps])
        for name in ("num_samples", "batch_size", "judge_context", "judge_batch_size", "bootstrap_rounds",
                     "control_student_steps", "control_search_samples",
                     "control_search_rounds", "protein_threads"):
            check_positive(name, getattr(self, name))
        if self.control_steps is not None:
            check_sampling_steps("control_steps", [self.control_steps])
        if any(not 0.0 < temperature <= 2.0 for temperature in self.exact_control_temperatures):
            raise ConfigError(f"exact_control_temperatures: {self.exact_control_temperatures}: every temperature must "
                              "be in (0, 2]")
        _exact_judge_spec("judge", self.judge)
        if not self.orders:
            raise ConfigError("orders: [] samples nothing; give at least one unmasking order (e.g. [random])")
        if len({_order("orders", spec) for spec in self.orders}) != len(self.orders):
            raise ConfigError(f"orders: {self.orders} names an order twice")
        if self.entropy_control and self.student and self.control_student_steps not in self.student_steps:
            raise ConfigError(f"control_student_steps: {self.control_student_steps} is not one of student_steps "
                              f"{self.student_steps} (or set entropy_control: false)")
        if self.entropy_control and self.student and self.control_steps is None and not self.teacher_steps:
            raise ConfigError("control_steps: the entropy-matched control needs teacher steps, and teacher_steps is "
                              "empty (set control_steps, or entropy_control: false)")


def dit_for(model: ModelConfig, **options):
    """The DiT of ``model``'s dimensions (``options``: the DiT's other arguments, as each caller needs them): the one
    place a config's dimensions meet the constructor."""
    from models.dit import DiT  # torch: loaded only where a model is built

    return DiT(model.vocab_size, model.hidden_size, model.num_layers, model.num_heads, model.cond_dim, **options)


def bf16_compute(cfg: Config, device_type: str) -> bool:
    """Whether the models compute in bf16: ``train.precision`` bf16, or auto on a GPU (master weights, optimizer
    states and gradient reductions stay fp32 either way)."""
    return cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device_type == "cuda")


def check_world(cfg: "Config", world_size: int) -> None:
    """The job's ranks must factor into tensor-parallel groups of ``model.tensor_parallel``."""
    if world_size % cfg.model.tensor_parallel:
        raise ConfigError(f"model.tensor_parallel: {cfg.model.tensor_parallel} does not divide the job's "
                          f"{world_size} ranks (world size = tensor-parallel x data-parallel ranks)")


def _exact_judge_spec(name: str, spec: str, required: bool = False) -> None:
    """``markov:PATH`` with a path (``required``: nothing else is accepted)."""
    if spec == "markov:" or (required and not spec.startswith("markov:")):
        raise ConfigError(f"{name}: {spec!r}: give markov:DIR or markov:DIR/chain.json (the chain a synthetic corpus "
                          "was sampled from: python -m data_prep synthetic markov --out DIR)")


def _order(name: str, spec: str, seq_len: int | None = None) -> str:
    """The canonical spelling of an unmasking order that parses (and fits sequences of ``seq_len``), else a
    ConfigError naming the key."""
    from models.unmasking import UnmaskingOrder  # torch: loaded only by configs that name an order

    try:
        order = UnmaskingOrder.parse(spec)
        if seq_len is not None:
            order.check_length(seq_len)
    except ValueError as err:
        raise ConfigError(f"{name}: {err}") from None
    return str(order)


# More sampling steps than this cost a sampler pass each and change nothing measurable (the paper's slowest
# teacher takes 1,024): a larger count is a typo, refused instead of running for hours.
MAX_SAMPLING_STEPS = 65536


def check_sampling_steps(name: str, steps: list[int]) -> None:
    if any(not 1 <= n <= MAX_SAMPLING_STEPS for n in steps):
        raise ConfigError(f"{name}: {steps}: every step count must be in [1, {MAX_SAMPLING_STEPS:,}] (the paper's "
                          "slowest teacher takes 1,024)")


def load_config(path: str | os.PathLike, overrides: list[str] | None = None, cls: type = Config) -> Any:
    """``load_yaml`` with the training ``Config`` as the class unless another is given."""
    return load_yaml(path, cls, overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline validate", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print(to_yaml(cfg), end="")
    return 0

