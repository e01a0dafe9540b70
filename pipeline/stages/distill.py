"""The distillation stage: DiDi-Instruct (spec §2–§5) with teacher, student, EMA student and discriminator
co-hosted under DeepSpeed (ZeRO 0–3, CPU or GPU).

All four models start from the teacher checkpoint's EMA weights. One iteration follows the algorithm box:
two-step student rollout (or N steps on the inference grid, ``distill.rollout_steps``) → teacher targets → discriminator step on coupled-noised fake and real rows →
rewards from the updated discriminator → group-normalised advantages → student step → EMA. Every random draw
is keyed by (seed, step, global row), so N ranks reproduce one process and a resumed run continues the same
streams; position-averaged terms use the global count of positions, so the data-parallel gradient equals
the single-process one.

Features: ZeRO-3 partitioning of all three engines (the frozen teacher optionally offloaded to CPU), exact
resume of both engines, optimisers, schedules, EMA, data position and counters, phase timings, non-finite
steps skipped per phase, EMA-student samples, MLflow on rank 0.
Tensor parallelism (``model.tensor_parallel``): all four models are split the same way (the discriminator's
head is replicated); the ranks of a tensor-parallel group draw the same rows, and every sum over the
vocabulary is reduced over the group (``models.vocab_parallel``).
Limitations: one rollout per optimizer step (no gradient accumulation); with ``real_side: teacher`` the
teacher samples with the plain ancestral sampler, which dominates the iteration.
The loop is ``pipeline.runtime.trainer``'s; ``Distillation`` supplies the engines, the iteration and the metrics.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from models.didi import (Rollout, beta_density, coupled_corruption, discriminator_loss, entropy, forward_kl,
                         group_mixture, group_normalised_advantages, jeffreys, marginal_log_prob, mixture_log_likelihood,
                         omega, rollout_times, row_rewards, sample_tau, snap_tau, student_loss, student_rollout,
                         teacher_forced_log_prob, teacher_joint_sample)
from models.diffusion import LogLinearSchedule, subs_log_probs
from models.discriminator import Discriminator
from models.dit import DiT, latent_shape, latent_width
from models.latent import LatentDraws
from models.sampler import ancestral_sample, draw_uniform
from models.unmasking import UnmaskingOrder
from pipeline.bundle import verify_bundle
from pipeline.config import Config, DistillConfig, dit_for
from pipeline.measure.exact_judge import ExactJudge, SampleScore
from pipeline.runtime.checkpoint import CheckpointError, model_signature
from pipeline.runtime.dataset import read_dataset_manifest
from pipeline.runtime.distributed import Dist, all_reduce_sum
from pipeline.runtime.ema import EMA
from pipeline.runtime.engine import build_engine, build_frozen_engine, build_model, ds_config, step_skipped
from pipeline.runtime.loop import NonFiniteGuard, autocast_for
from pipeline.runtime.randomness import (DISCRIMINATOR_TIME, DROPOUT, EXACT_TRAJECTORY, LATENT, LATENT_INIT,
                                         LATENT_MATCH, ROLLOUT, TAU, TEACHER_SAMPLE, keyed_generator, keyed_seed)
from pipeline.runtime.trainer import Stage, Trainer, Update
from pipeline.runtime.weights import ema_state_dict, read_meta, resolve_checkpoint

PHASES = ("rollout", "teacher", "discriminator", "reward", "student")
TAU_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)  # edges of the τ bins the reward's mean is logged in
TAU_BIN_NAMES = tuple(f"reward/mean_tau_{lo:.2f}-{hi:.2f}" for lo, hi in zip(TAU_BINS[:-1], TAU_BINS[1:]))
CURVES = {
    "discriminator": ("discriminator/loss", "discriminator/accuracy"),
    "reward": ("reward/mean", "reward/std", "reward/group_std"),
    "reward by the row's τ": TAU_BIN_NAMES,
    "corr(advantage, τ)": ("advantage/tau_correlation",),
    "corr(advantage, exact quality)": ("advantage/exact_correlation",),
    "KL(teacher ‖ student), nats": ("student/kl_step1", "student/kl_last", "student/match_kl"),
    "student entropy, nats": ("student/entropy",),
    "EMA student val NELBO (nats/token)": ("val/nelbo_nats",),
    "seconds per iteration": tuple(f"time/{p}_s" for p in PHASES),
}


def is_bundle(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def check_teacher(cfg: Config) -> Path:
    """The teacher's checkpoint folder or inference bundle, after checking that it holds the configured model
    and tokenizer (before any work starts)."""
    source = Path(cfg.distill.teacher)
    if is_bundle(source):
        manifest = verify_bundle(source)
        where, model, tokenizer = f"distill.teacher: bundle {source}", manifest["model"], manifest["tokenizer"]["fingerprint"]
    else:
        source = resolve_checkpoint(source)
        meta = read_meta(source)
        where, model, tokenizer = f"distill.teacher: {source}", meta["model"], meta.get("tokenizer")
        if meta["engines"] != ["model"]:
            raise CheckpointError(f"{where} holds engines {meta['engines']}, not a pre-training checkpoint")
    if model.get("causal"):
        raise CheckpointError(f"{where} is an autoregressive model (an in-domain judge), not a diffusion teacher")
    if model.get("latent_dim"):
        raise CheckpointError(f"{where} is a latent-conditioned student (latent_dim {model['latent_dim']}); a teacher "
                              "takes no latent input: distil from its teacher")
    diff = [f"{k} {model.get(k)} there, {v} in the config" for k, v in model_signature(cfg).items() if model.get(k) != v]
    if diff:
        raise CheckpointError(f"{where} holds another model than the config's: {'; '.join(diff)}")
    fingerprint = read_dataset_manifest(cfg.data.path)["tokenizer"]["fingerprint"]
    if tokenizer not in (None, fingerprint):
        raise CheckpointError(f"{where} was trained with tokenizer {tokenizer}, data.path {cfg.data.path} "
                              f"holds tokenizer {fingerprint}")
    return source


def teacher_weights(cfg: Config, source: Path) -> dict[str, torch.Tensor]:
    """The teacher's EMA weights: a bundle's model, or a checkpoint's EMA consolidated from its rank files."""
    if is_bundle(source):
        return load_file(source / "model.safetensors")
    m = cfg.model
    with torch.device("meta"):
        shapes = dit_for(m)
    return ema_state_dict(source, shapes)


def teacher_copy(cfg: Config, weights: dict[str, torch.Tensor], dropout: float) -> DiT:
    return build_model(cfg.model, weights=weights, dropout=dropout)


def student_weights(cfg: Config, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The teacher's weights, with a latent-conditioned student's projection W_ξ (``distill.latent``): 0, so that the
    student starts as the teacher exactly, or N(0, latent_init²) entries drawn from the run's seed."""
    c = cfg.distill
    if not c.latent:
        return weights
    width = latent_width(c.latent_input, cfg.model.hidden_size, cfg.model.cond_dim)
    projection = torch.randn(width, c.latent, generator=keyed_generator(cfg.run.seed, LATENT_INIT))
    return {**weights, "latent_map.weight": projection * c.latent_init}


class PhaseTimer:
    """Wall-clock seconds per phase (the device synchronised at each boundary so GPU work is counted)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[phase] += time.perf_counter() - start


@dataclass
class RolloutResult:
    """The rollout phase: the rows' generators (the coupled corruption draws on from them), τ, the grid times."""
    generators: list[torch.Generator]
    tau: torch.Tensor
    times: torch.Tensor
    roll: Rollout


@dataclass
class JointFill:
    """``distill.latent_match``: each row's matched rollout step k (its first, or one drawn uniformly), the state z_k
    it started from, the positions it revealed, the teacher's joint fill y of them from z_k and log T(y)."""
    step: torch.Tensor
    start: torch.Tensor
    where: torch.Tensor
    y: torch.Tensor
    log_t: torch.Tensor


@dataclass
class TeacherResult:
    """The teacher phase: its log-probabilities at each rollout state, the real side's rows, and its joint fill
    of the first step (with ``distill.latent_match``)."""
    targets: list[torch.Tensor]
    real: torch.Tensor
    fill: JointFill | None


@dataclass
class DiscriminatorResult:
    """The discriminator phase: its time t and σ(t), the noised fake rows and the positions it judged, its loss
    and accuracy."""
    t: torch.Tensor
    sigma: torch.Tensor
    z_fake: torch.Tensor
    m_fake: torch.Tensor
    loss: torch.Tensor
    accuracy: torch.Tensor


@dataclass
class RewardResult:
    """The reward phase: the updated discriminator's logits on the fake rows, the rows' rewards and advantages,
    the student loss's weight per row, and the exact scores (with an exact judge)."""
    d_fake: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    weight: torch.Tensor
    scores: list[SampleScore] | None


@dataclass
class StudentResult:
    """The student phase: its loss, the KL and entropy at each rollout state, and (``distill.latent_match``) the
    matched step's joint KL from the teacher's fill to the student's ξ-mixture, per revealed position."""
    loss: torch.Tensor
    kls: list[torch.Tensor]
    hs: list[torch.Tensor]
    match_kl: torch.Tensor | None


def rows_at(per_step: list[torch.Tensor], step: torch.Tensor) -> torch.Tensor:
    """Row r of ``per_step[step[r]]`` for every row r, one step at a time: stacking a rollout's per-step
    log-probabilities (N × B' × L × V) to index them would copy them all."""
    out = per_step[0]
    for k, value in enumerate(per_step[1:], 1):
        out = torch.where((step == k).view(-1, *[1] * (value.dim() - 1)), value, out)
    return out


class Distiller:
    """The four models of a distillation run and one iteration of the algorithm box, phase by phase.

    ``student`` and ``disc`` are trainable engines (DeepSpeed's, or anything with the same ``backward``,
    ``step``, ``was_step_applied``, ``module``, ``get_lr`` and a ``basic_optimizer`` that reports
    ``last_step_skipped``); ``teacher`` is frozen."""

    def __init__(self, cfg: Config, d: Dist, student, disc, teacher, teacher_dir=None,
                 judge: ExactJudge | None = None):
        self.cfg, self.d, self.mask_id = cfg, d, cfg.model.vocab_size
        self.schedule, self.autocast = LogLinearSchedule(), autocast_for(cfg, d)
        self.student, self.disc = student, disc
        self.teacher, self.teacher_dir, self.judge = teacher, teacher_dir, judge  # judge: for reward: exact
        self.shard = student.module.vocab_shard  # this rank's vocabulary columns (None: all)
        self.order = UnmaskingOrder.parse(cfg.distill.rollout_order)  # which positions a rollout step reveals
        # one row's ξ: (d,), or (L, d) with a ξ_i for each position
        self.latent_shape = latent_shape(cfg.distill.latent_input, cfg.distill.latent, cfg.model.seq_len)
        self.ema = EMA(student.module, cfg.train.ema, cfg.train.ema_warmup)
        self.guard = NonFiniteGuard(cfg.train.max_nonfinite, ("discriminator", "student"), d.is_main,
                                    cfg.train.max_loss_ratio)

    # ---- the models as the maths sees them: SUBS log-probabilities at σ = 0 ----

    def _log_probs(self, engine, z: torch.Tensor, latent: torch.Tensor | None = None) -> torch.Tensor:
        """All-[MASK] rows are identical and the models are deterministic without dropout, so one row is
        computed and shared: an exact identity that makes the first rollout step (and the teacher's target
        for it) one row's work. A latent-conditioned student's rows differ by their ξ, so they are not shared."""
        shared = (self.cfg.model.dropout == 0 or not engine.module.training) and latent is None
        if shared and z.shape[0] > 1 and bool((z == self.mask_id).all()):
            return self._log_probs(engine, z[:1]).expand(z.shape[0], -1, -1)
        with self.autocast():
            logits = engine(z, torch.zeros(z.shape[0], device=z.device), latent)
        return subs_log_probs(logits, z, self.mask_id, self.shard)

    def _student(self, z: torch.Tensor, latent: torch.Tensor | None = None) -> torch.Tensor:
        return self._log_probs(self.student, z, latent)

    def _global_count(self, mask: torch.Tensor) -> torch.Tensor:
        """Masked positions over all ranks, divided by the number of ranks (see ``masked_mean``); the ranks of a
        tensor-parallel group count the same rows, which the division cancels."""
        count = mask.sum().double()
        if self.d.world_size > 1:
            dist.all_reduce(count)
        return (count / self.d.world_size).float()

    def generators(self, step: int, purpose: int, rows: int, *keys: int) -> list[torch.Generator]:
        first = self.d.data_rank * rows
        return [keyed_generator(self.cfg.run.seed, purpose, step, first + i, *keys, device=self.d.device)
                for i in range(rows)]

    def latent_draws(self, step: int, rows: int, *keys: int) -> LatentDraws | None:
        """The student's ξ for ``rows`` rollout rows, keyed apart from their trajectories (None: no latent)."""
        c = self.cfg.distill
        if not c.latent:
            return None
        return LatentDraws(rows, self.latent_shape, self.generators(step, LATENT, rows, *keys), self.d.device,
                           c.latent_redraw)

    def taus(self, step: int, row_generators: list[torch.Generator]) -> torch.Tensor:
        c = self.cfg.distill
        if c.tau_per == "row":
            tau = sample_tau(row_generators, c.tau_a, c.tau_b)
        else:
            groups = self.generators(step, TAU, c.rollout_rows // c.group_size)
            tau = sample_tau(groups, c.tau_a, c.tau_b).repeat_interleave(c.group_size)
        return snap_tau(tau, c.steps, c.t0).to(self.d.device)

    @torch.no_grad()
    def teacher_samples(self, step: int, rows: int) -> torch.Tensor:
        z = torch.full((rows, self.cfg.model.seq_len), self.mask_id, device=self.d.device)
        return ancestral_sample(lambda x: self._log_probs(self.teacher, x), z, self.cfg.distill.teacher_sample_steps,
                                self.mask_id, self.schedule, self.generators(step, TEACHER_SAMPLE, rows),
                                cache=self.cfg.train.zero_stage != 3, shard=self.shard)

    def sample_log_likelihood(self, step: int, roll: Rollout, times: torch.Tensor) -> torch.Tensor:
        """The student's log-likelihood of its rollouts for ``reward: exact``: log q̂(x) over
        ``exact_reward_trajectories`` teacher-forced trajectories, or (0 of them) log P(x | its own trajectory)."""
        c = self.cfg.distill
        if c.exact_reward_trajectories == 0:
            return roll.log_prob.detach()
        forced = [teacher_forced_log_prob(self._student, roll.x, times, self.mask_id, self.schedule,
                                          self.generators(step, EXACT_TRAJECTORY, c.rollout_rows, k), self.shard,
                                          self.order, self.latent_draws(step, c.rollout_rows, EXACT_TRAJECTORY, k))
                  for k in range(c.exact_reward_trajectories)]
        return marginal_log_prob(torch.stack(forced)).float()

    # ---- one iteration, phase by phase ----

    def iteration(self, step: int, x_data: torch.Tensor, timer: PhaseTimer) -> dict[str, float]:
        """Rollout → teacher → discriminator step → reward → student step → EMA; returns this rank's metrics."""
        if self.cfg.model.dropout > 0:
            torch.manual_seed(keyed_seed(self.cfg.run.seed, DROPOUT, step, self.d.data_rank))
        with timer("rollout"):
            rollout = self.rollout(step)
        with timer("teacher"), torch.no_grad():
            teacher = self.teacher_targets(step, rollout, x_data)
        with timer("discriminator"):
            disc = self.discriminator_step(step, rollout, teacher)
        with timer("reward"), torch.no_grad():
            reward = self.reward(step, rollout, disc)
        with timer("student"):
            student = self.student_step(step, rollout, teacher, reward)
            self.ema_step()
        return iteration_metrics(self.cfg.distill, rollout, disc, reward, student)

    def rollout(self, step: int) -> RolloutResult:
        """The student's rollouts from all-[MASK] at this step's τ (their draws keyed by step and row)."""
        c = self.cfg.distill
        gens = self.generators(step, ROLLOUT, c.rollout_rows)
        tau = self.taus(step, gens)
        times = rollout_times(tau, c.steps, c.t0)
        roll = student_rollout(self._student, times, self.cfg.model.seq_len, self.mask_id, self.schedule, gens,
                               self.shard, self.order, self.latent_draws(step, c.rollout_rows))
        return RolloutResult(gens, tau, times, roll)

    def teacher_targets(self, step: int, rollout: RolloutResult, x_data: torch.Tensor) -> TeacherResult:
        """The teacher's log-probabilities at every rollout state, and the real side's rows (data or teacher
        samples)."""
        targets = [self._log_probs(self.teacher, z) for z in rollout.roll.states]
        real = x_data if self.cfg.distill.real_side == "data" else self.teacher_samples(step, x_data.shape[0])
        return TeacherResult(targets, real, self.joint_fill(step, rollout.roll) if self.cfg.distill.latent_match else None)

    def joint_fill(self, step: int, roll: Rollout) -> JointFill:
        """The teacher's joint fill of the positions each row's matched rollout step revealed, from the state that
        step started in (``distill.latent_match_at``: the first step, or one per row drawn uniformly)."""
        c = self.cfg.distill
        gens = self.generators(step, LATENT_MATCH, c.rollout_rows)
        k = torch.zeros(c.rollout_rows, dtype=torch.long, device=self.d.device)
        if c.latent_match_at == "every":
            k = (draw_uniform((c.rollout_rows, 1), gens, self.d.device)[:, 0] * len(roll.states)).long()
            k = k.clamp(max=len(roll.states) - 1)
        start = rows_at(roll.states, k)
        where = (start == self.mask_id) & (rows_at([*roll.states[1:], roll.x], k) != self.mask_id)
        y, log_t = teacher_joint_sample(lambda z: self._log_probs(self.teacher, z), start, where,
                                        c.latent_match_substeps, self.mask_id, gens, self.shard)
        return JointFill(k, start, where, y, log_t)

    def discriminator_step(self, step: int, rollout: RolloutResult, teacher: TeacherResult) -> DiscriminatorResult:
        """Fake (rollout) and real rows noised with coupled masks at time t (the rollout's τ when coupled), and
        one discriminator step on them."""
        c, mask_id = self.cfg.distill, self.mask_id
        t = rollout.tau if c.coupled_time else sample_tau(self.generators(step, DISCRIMINATOR_TIME, c.rollout_rows),
                                                          c.tau_a, c.tau_b).to(rollout.tau.device)
        z_fake, z_real = coupled_corruption(rollout.roll.x, teacher.real.repeat_interleave(c.group_size, 0), t,
                                            mask_id, self.schedule, rollout.generators)
        m_fake, m_real = z_fake == mask_id, z_real == mask_id
        if c.discriminator_positions == "all":
            m_fake, m_real = torch.ones_like(m_fake), torch.ones_like(m_real)
        sigma = self.schedule.sigma(t)
        with self.autocast():
            d_real, d_fake = self.disc(torch.cat([z_real, z_fake]), torch.cat([sigma, sigma])).float().chunk(2)
        loss, accuracy = discriminator_loss(d_real, d_fake, m_real, m_fake, c.label_smoothing,
                                            self._global_count(m_real), self._global_count(m_fake))
        self.disc.backward(loss)
        self.disc.step()
        return DiscriminatorResult(t, sigma, z_fake, m_fake, loss, accuracy)

    def reward(self, step: int, rollout: RolloutResult, disc: DiscriminatorResult) -> RewardResult:
        """Rewards from the updated discriminator (or, ``reward: exact``, from the exact judge), group-normalised
        advantages and the student loss's weight per row."""
        c = self.cfg.distill
        self.disc.eval()
        with self.autocast():
            d_fake = self.disc(disc.z_fake, disc.sigma).float()
        self.disc.train()
        # with an exact judge the rows are scored once, for the reward (reward: exact) and the correlation
        scores = None if self.judge is None else [self.judge.score(row) for row in rollout.roll.x.tolist()]
        rewards = (row_rewards(d_fake, disc.m_fake, c.reward_clip) if c.reward == "discriminator"
                   else exact_rewards(scores, self.sample_log_likelihood(step, rollout.roll, rollout.times),
                                      c.reward_clip))
        advantages = group_normalised_advantages(rewards, c.group_size, c.advantage_clip)
        weight = omega(disc.t, self.schedule) if c.omega_weight else torch.ones_like(disc.t)
        if c.importance_weight:
            weight = weight / beta_density(disc.t, c.tau_a, c.tau_b)
        return RewardResult(d_fake, rewards, advantages, weight, scores)

    def match_predictions(self, step: int, roll: Rollout, fill: JointFill) -> torch.Tensor:
        """The student's predictions for ``latent_match_draws`` fresh ξ where the match is fitted: the mixture it
        fits. At the first step (all [MASK]) one set of M rows (M, L, V + 1), the same on every rank; at every
        step M rows per rollout row at its state z_k (B', M, L, V + 1), keyed by the global row. Without a latent,
        the rollout's own prediction at each row's matched state (no extra forward)."""
        c = self.cfg.distill
        if not c.latent:
            return roll.log_probs[0][:1] if c.latent_match_at == "first" else rows_at(
                roll.log_probs, fill.step).unsqueeze(1)
        draws, first = c.latent_match_draws, self.d.data_rank * c.rollout_rows
        if c.latent_match_at == "first":
            z, keys = torch.full((draws, self.cfg.model.seq_len), self.mask_id, device=self.d.device), [
                (j, 1) for j in range(draws)]
        else:
            z, keys = fill.start.repeat_interleave(draws, 0), [(first + r, j, 2) for r in range(c.rollout_rows)
                                                                for j in range(draws)]
        xi = LatentDraws(z.shape[0], self.latent_shape, [keyed_generator(self.cfg.run.seed, LATENT_MATCH, step, *key,
                                                                device=self.d.device) for key in keys], self.d.device)
        log_p = self._student(z, xi(0))
        return log_p if c.latent_match_at == "first" else log_p.view(c.rollout_rows, draws, *log_p.shape[1:])

    def student_step(self, step: int, rollout: RolloutResult, teacher: TeacherResult,
                     reward: RewardResult) -> StudentResult:
        """One student step on the advantage-weighted log-likelihood with the KL to the teacher and the entropy
        at every rollout state."""
        c, roll = self.cfg.distill, rollout.roll
        counts = [self._global_count(m) for m in roll.masked]
        log_probs = list(roll.log_probs)
        if c.latent_kl == "marginal":  # the first state is all [MASK]: regularise the group's ξ-averaged prediction
            log_probs[0] = group_mixture(log_probs[0], c.group_size)
        steps = list(zip(teacher.targets, log_probs, roll.masked, counts))
        if c.kl == "forward":
            kls = [forward_kl(target, p, m, n, self.shard) for target, p, m, n in steps]
        else:
            kls = [jeffreys(target, p, m, c.jeffreys_beta, n, self.shard) for target, p, m, n in steps]
        hs = [entropy(p, m, n, self.shard) for _, p, m, n in steps]
        lambdas = (c.lambda_kl, c.lambda_h) if c.regularisation else (0.0, 0.0)
        log_q = match_kl = None
        if teacher.fill is not None:  # the matched step's ξ-mixture fitted to the teacher's joint fill
            fill = teacher.fill
            log_q = mixture_log_likelihood(self.match_predictions(step, roll, fill), fill.y, fill.where, self.shard)
            match_kl = (fill.log_t - log_q.detach()).sum() / self._global_count(fill.where).clamp(min=1)
        loss = student_loss(reward.weight, reward.advantages, roll.log_prob, kls, hs, kl_weights(c), *lambdas,
                            match=log_q, lambda_match=c.latent_match)
        self.student.backward(loss)
        self.student.step()
        return StudentResult(loss, kls, hs, match_kl)

    def ema_step(self) -> None:
        """The EMA student follows the student's step (not a skipped one)."""
        if not step_skipped(self.student):
            self.ema.update()


def iteration_metrics(c: DistillConfig, rollout: RolloutResult, disc: DiscriminatorResult, reward: RewardResult,
                      student: StudentResult) -> dict[str, float]:
    """This rank's metrics of one iteration, from its phases' results."""
    rewards, advantages, tau = reward.rewards, reward.advantages, rollout.tau
    clipped = ((reward.d_fake.abs() >= c.reward_clip) & disc.m_fake).sum() / disc.m_fake.sum().clamp(min=1)
    exact = ({} if reward.scores is None
             else {"advantage/exact_correlation": exact_correlation(reward.scores, advantages)})
    match = {} if student.match_kl is None else {"student/match_kl": student.match_kl.item()}
    kls, hs = student.kls, student.hs
    return {
        **exact, **match,
        "discriminator/loss": disc.loss.item(), "discriminator/accuracy": disc.accuracy.item(),
        "reward/mean": rewards.mean().item(), "reward/std": rewards.std().item(),
        "reward/clipped_fraction": clipped.item(),
        "reward/group_std": rewards.view(-1, c.group_size).std(1).mean().item(),
        "advantage/abs_max": advantages.abs().max().item(),
        "advantage/clipped_fraction": (advantages.abs() >= c.advantage_clip).float().mean().item(),
        "student/loss": student.loss.item(), **{f"student/kl_step{k + 1}": kl.item() for k, kl in enumerate(kls)},
        "student/kl_last": kls[-1].item(), "student/entropy": (sum(hs) / len(hs)).item(),
        "student/log_prob": rollout.roll.log_prob.mean().item(), "student/omega_mean": reward.weight.mean().item(),
        "student/tau_mean": tau.mean().item(), "discriminator/t_mean": disc.t.mean().item(),
        **tau_diagnostics(tau, rewards, advantages),
    }


def exact_rewards(scores: list[SampleScore], log_q: torch.Tensor, break_cost: float) -> torch.Tensor:
    """``distill.reward: exact``: log p(x) − log q_ν(x) per row, p the chain's exact likelihood (``scores``: the
    rows' exact scores; a token inside the row that is not a letter costs ``break_cost`` nats) and ``log_q`` the
    student's (``Distiller.sample_log_likelihood``): minus KL(q_ν ‖ p) in expectation, the distillation's aim
    with a perfect reward in place of the discriminator's estimate. With log P_ν(x | its own trajectory) in place
    of log q_ν(x) the expectation also subtracts the information the trajectory holds about x, penalising
    exactly the later steps that compensate earlier ones."""
    log_p = torch.tensor([-(s.nll + break_cost * s.breaks) for s in scores], device=log_q.device)
    return log_p - log_q.detach()


def exact_correlation(scores: list[SampleScore], advantages: torch.Tensor) -> float:
    """With ``train.exact_judge``: the correlation of this rank's advantages with the rows' exact quality (minus
    the NLL per letter under the chain): whether the reward ranks the student's samples the right way (0 for
    a constant one)."""
    quality = [-s.nll / s.letters if s.letters else 0.0 for s in scores]
    pair = torch.stack([advantages.detach().double().cpu(), torch.tensor(quality, dtype=torch.float64)])
    value = torch.corrcoef(pair)[0, 1].item()
    return value if math.isfinite(value) else 0.0


def kl_weights(c: DistillConfig) -> tuple[float, ...]:
    """c_k of each rollout state's KL: c1 at the first (all-[MASK]) state, c2 at every later one."""
    return (c.c1,) + (c.c2,) * (c.steps - 1)


def tau_diagnostics(tau: torch.Tensor, rewards: torch.Tensor, advantages: torch.Tensor) -> dict[str, float]:
    """Whether a row's τ, rather than its quality, drives its reward and advantage: the correlation of the
    advantages with τ (0 when τ is shared by a group) and, per τ bin, the sum of the rewards and the rows
    (``bin_means`` turns them into means once summed over a logging window and the ranks)."""
    centred_tau, centred_advantage = tau - tau.mean(), advantages - advantages.mean()
    bins = torch.bucketize(tau, torch.tensor(TAU_BINS[1:-1], device=tau.device), right=True)
    inside = (bins[None, :] == torch.arange(len(TAU_BIN_NAMES), device=tau.device)[:, None]).float()
    # one transfer to the host for all of them (each .item() would synchronise the device)
    values = torch.cat([torch.stack([centred_tau @ centred_advantage, centred_tau.norm() * centred_advantage.norm()]),
                        inside @ rewards.float(), inside.sum(1)]).tolist()
    bins_count = len(TAU_BIN_NAMES)
    covariance, scale, sums, rows = values[0], values[1], values[2:2 + bins_count], values[2 + bins_count:]
    out = {"advantage/tau_correlation": covariance / scale if scale > 1e-12 else 0.0}
    for name, total, count in zip(TAU_BIN_NAMES, sums, rows):
        out[f"{name}:sum"], out[f"{name}:rows"] = total, count
    return out


def bin_means(metrics: dict[str, float]) -> dict[str, float]:
    """``tau_diagnostics``' per-bin sums and row counts replaced by the mean reward of the bin (left out when
    the bin held no row)."""
    out = {k: v for k, v in metrics.items() if not k.endswith((":sum", ":rows"))}
    for name in TAU_BIN_NAMES:
        if metrics.get(f"{name}:rows", 0) > 0:
            out[name] = metrics[f"{name}:sum"] / metrics[f"{name}:rows"]
    return out


def initial_models(cfg: Config, weights: dict[str, torch.Tensor]) -> tuple[DiT, Discriminator, DiT]:
    """Student, discriminator and teacher, all from the teacher's weights (the discriminator's head is new,
    drawn from ``run.seed``, the same on every rank)."""
    torch.manual_seed(cfg.run.seed)
    student = build_model(cfg.model, weights=student_weights(cfg, weights), dropout=cfg.model.dropout,
                          latent_dim=cfg.distill.latent, latent_input=cfg.distill.latent_input)
    disc = Discriminator(teacher_copy(cfg, weights, cfg.model.dropout), cfg.distill.unfreeze_blocks,
                         cfg.distill.sigma_to)
    return student, disc, teacher_copy(cfg, weights, 0.0)


def build_distiller(cfg: Config, d: Dist, weights: dict[str, torch.Tensor] | None = None,
                    judge: ExactJudge | None = None) -> Distiller:
    """The DeepSpeed engines of a run, initialised from the teacher's EMA weights (or from ``weights``, for
    benchmarks); ``judge`` scores the rollouts under ``distill.reward: exact``."""
    teacher_dir = None
    if weights is None:
        teacher_dir = check_teacher(cfg)
        weights = teacher_weights(cfg, teacher_dir)
    student, disc, teacher = initial_models(cfg, weights)
    steps = cfg.train.max_steps
    latent = {"latent_map.": cfg.distill.latent_lr_scale} if cfg.distill.latent else None
    student = build_engine(student, cfg.optim, steps, ds_config(cfg), latent)
    disc = build_engine(disc, cfg.discriminator_optim, steps, ds_config(cfg, grad_clip=cfg.discriminator_optim.grad_clip))
    teacher = build_frozen_engine(teacher, ds_config(cfg, zero_stage=3 if cfg.train.zero_stage == 3 else 0,
                                                     offload=cfg.distill.teacher_offload))
    return Distiller(cfg, d, student, disc, teacher, teacher_dir, judge)


class Distillation(Stage):
    """A ``Distiller``'s iterations in the trainer: every iteration's metrics averaged over the window and the
    ranks, with the phases' seconds, the mean reward per τ bin and the learning rates."""

    name, curves, baseline_samples = "distill", CURVES, True  # before any update the student is the teacher

    def __init__(self, run: Distiller):
        self.run, self.d = run, run.d
        self.model, self.ema, self.guard = run.student, run.ema, run.guard
        self.engines = {"student": run.student, "discriminator": run.disc}
        self.window: dict[str, float] = defaultdict(float)
        self.timer = PhaseTimer(self.d.device)
        self.rollout_tokens = run.cfg.distill.rollout_rows * run.cfg.model.seq_len * self.d.data_size

    def about(self) -> str:
        return f"teacher {self.run.teacher_dir}"

    def resumed(self, side: dict) -> None:
        if side["teacher"] != str(self.run.teacher_dir):
            raise CheckpointError(f"{self.run.cfg.run.out_dir} was distilled from {side['teacher']}, the config now "
                                  f"names {self.run.teacher_dir}; use another run.out_dir")

    def side_state(self) -> dict:
        return {"teacher": str(self.run.teacher_dir)}

    def step(self, step: int, batches) -> list[Update]:
        values = self.run.iteration(step, next(batches)["input_ids"].to(self.d.device), self.timer)
        for key, value in values.items():
            self.window[key] += value
        return [Update("discriminator", step_skipped(self.run.disc), values["discriminator/loss"]),
                Update("student", step_skipped(self.run.student), values["student/loss"])]

    def window_metrics(self, iterations: int, elapsed: float) -> dict[str, float]:
        keys = sorted(self.window) + [f"time/{p}_s" for p in PHASES]
        sums = all_reduce_sum(*(self.window[k] for k in sorted(self.window)),
                              *(self.timer.seconds[p] for p in PHASES), device=self.d.device)
        metrics = bin_means({k: v / (iterations * self.d.world_size) for k, v in zip(keys, sums)})
        metrics.update(self.guard.metrics())
        metrics.update({"student/lr": self.run.student.get_lr()[0], "discriminator/lr": self.run.disc.get_lr()[0],
                        "time/iteration_s": elapsed / iterations,
                        "train/rollout_tokens_per_s": self.rollout_tokens * iterations / elapsed})
        self.window, self.timer = defaultdict(float), PhaseTimer(self.d.device)
        return metrics

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"d_acc": f"{metrics['discriminator/accuracy']:.2f}", "kl": f"{metrics['student/kl_last']:.3f}",
                "r": f"{metrics['reward/mean']:.2f}"}

    def summary(self, step: int, metrics: dict[str, float], evaluation: dict[str, float]) -> str:
        return (f"step {step}: discriminator accuracy {metrics.get('discriminator/accuracy', 0):.3f}, "
                f"reward {metrics.get('reward/mean', 0):+.3f}, KL {metrics.get('student/kl_last', 0):.4f}, "
                f"EMA student val NELBO {evaluation['val/nelbo_nats']:.4f} nats/token")


def distill(cfg: Config, d: Dist) -> dict:
    """Distil (or resume distilling) the teacher into a few-step student; returns the final metrics."""
    trainer = Trainer(cfg, d)
    return trainer.run(Distillation(build_distiller(cfg, d, judge=trainer.judge)))
