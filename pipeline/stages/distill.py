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
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from tqdm import tqdm

from data_prep.tokenizers import load_tokenizer
from models.didi import (Rollout, beta_density, coupled_corruption, discriminator_loss, entropy, forward_kl,
                         group_normalised_advantages, jeffreys, marginal_log_prob, omega, rollout_times, row_rewards,
                         sample_tau, snap_tau, student_loss, student_rollout, teacher_forced_log_prob)
from models.diffusion import LogLinearSchedule, subs_log_probs
from models.discriminator import Discriminator
from models.dit import DiT
from models.sampler import ancestral_sample
from models.unmasking import UnmaskingOrder
from pipeline.measure.exact_judge import ExactJudge, SampleScore
from pipeline.runtime.checkpoint import CheckpointError, model_signature
from pipeline.config import Config, DistillConfig, dit_for
from pipeline.runtime.data import loader_from_config
from pipeline.runtime.dataset import dataset_tokenizer_dir, read_dataset_manifest
from pipeline.runtime.distributed import Dist, all_reduce_sum
from pipeline.runtime.ema import EMA
from pipeline.runtime.engine import build_engine, build_frozen_engine, build_model, ds_config, step_skipped
from pipeline.runtime.loop import (NonFiniteError, NonFiniteGuard, autocast_for, due, end_of_step, endless,
                                   exact_curves, exact_judge_for, finish, log_samples, record, record_evaluation,
                                   resume, sample_texts, side_state, start_tracking)
from pipeline.runtime.preemption import PreemptionWatch
from pipeline.stages.pretrain import evaluate
from pipeline.runtime.randomness import (DISCRIMINATOR_TIME, DROPOUT, EXACT_TRAJECTORY, ROLLOUT, TAU, TEACHER_SAMPLE,
                                         keyed_generator, keyed_seed)
from pipeline.bundle import verify_bundle
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
    "KL(teacher ‖ student), nats": ("student/kl_step1", "student/kl_last"),
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


class Distiller:
    """The four models of a distillation run and one iteration of the algorithm box, phase by phase.

    ``student`` and ``disc`` are trainable engines (DeepSpeed's, or anything with the same ``backward``,
    ``step``, ``was_step_applied``, ``module`` and ``get_lr``) whose optimizers report ``last_step_skipped``;
    ``teacher`` is frozen."""

    def __init__(self, cfg: Config, d: Dist, student, student_opt, disc, disc_opt, teacher, teacher_dir=None,
                 judge: ExactJudge | None = None):
        self.cfg, self.d, self.mask_id = cfg, d, cfg.model.vocab_size
        self.schedule, self.autocast = LogLinearSchedule(), autocast_for(cfg, d)
        self.student, self.student_opt, self.disc, self.disc_opt = student, student_opt, disc, disc_opt
        self.teacher, self.teacher_dir, self.judge = teacher, teacher_dir, judge  # judge: for reward: exact
        self.shard = student.module.vocab_shard  # this rank's vocabulary columns (None: all)
        self.order = UnmaskingOrder.parse(cfg.distill.rollout_order)  # which positions a rollout step reveals
        self.ema = EMA(student.module, cfg.train.ema, cfg.train.ema_warmup)
        self.guard = NonFiniteGuard(cfg.train.max_nonfinite, ("discriminator", "student"), d.is_main,
                                    cfg.train.max_loss_ratio)

    # ---- the models as the maths sees them: SUBS log-probabilities at σ = 0 ----

    def _log_probs(self, engine, z: torch.Tensor) -> torch.Tensor:
        """All-[MASK] rows are identical and the models are deterministic without dropout, so one row is
        computed and shared: an exact identity that makes the first rollout step (and the teacher's target
        for it) one row's work."""
        shared = self.cfg.model.dropout == 0 or not engine.module.training
        if shared and z.shape[0] > 1 and bool((z == self.mask_id).all()):
            return self._log_probs(engine, z[:1]).expand(z.shape[0], -1, -1)
        with self.autocast():
            logits = engine(z, torch.zeros(z.shape[0], device=z.device))
        return subs_log_probs(logits, z, self.mask_id, self.shard)

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
        forced = [teacher_forced_log_prob(lambda z: self._log_probs(self.student, z), roll.x, times, self.mask_id,
                                          self.schedule, self.generators(step, EXACT_TRAJECTORY, c.rollout_rows, k),
                                          self.shard, self.order)
                  for k in range(c.exact_reward_trajectories)]
        return marginal_log_prob(torch.stack(forced)).float()

    # ---- one iteration ----

    def iteration(self, step: int, x_data: torch.Tensor, timer: PhaseTimer) -> dict[str, float]:
        """Rollout → teacher → discriminator step → reward → student step → EMA; returns this rank's metrics."""
        c, mask_id, schedule = self.cfg.distill, self.mask_id, self.schedule
        if self.cfg.model.dropout > 0:
            torch.manual_seed(keyed_seed(self.cfg.run.seed, DROPOUT, step, self.d.data_rank))
        gens = self.generators(step, ROLLOUT, c.rollout_rows)
        tau = self.taus(step, gens)
        times = rollout_times(tau, c.steps, c.t0)
        with timer("rollout"):
            roll = student_rollout(lambda z: self._log_probs(self.student, z), times,
                                   self.cfg.model.seq_len, mask_id, schedule, gens, self.shard,
                                   self.order)
        with timer("teacher"), torch.no_grad():
            targets = [self._log_probs(self.teacher, z) for z in roll.states]
            real = x_data if c.real_side == "data" else self.teacher_samples(step, x_data.shape[0])
        # the time of the discriminator's corruption, of its σ and of ω: the rollout's τ when coupled
        t = tau if c.coupled_time else sample_tau(self.generators(step, DISCRIMINATOR_TIME, c.rollout_rows),
                                                  c.tau_a, c.tau_b).to(tau.device)
        z_fake, z_real = coupled_corruption(roll.x, real.repeat_interleave(c.group_size, 0), t, mask_id,
                                            schedule, gens)
        m_fake, m_real = z_fake == mask_id, z_real == mask_id
        if c.discriminator_positions == "all":
            m_fake, m_real = torch.ones_like(m_fake), torch.ones_like(m_real)
        sigma = schedule.sigma(t)

        with timer("discriminator"):
            with self.autocast():
                d_real, d_fake = self.disc(torch.cat([z_real, z_fake]), torch.cat([sigma, sigma])).float().chunk(2)
            loss_d, accuracy = discriminator_loss(d_real, d_fake, m_real, m_fake, c.label_smoothing,
                                                  self._global_count(m_real), self._global_count(m_fake))
            self.disc.backward(loss_d)
            self.disc.step()

        with timer("reward"), torch.no_grad():
            self.disc.eval()
            with self.autocast():
                d_fake = self.disc(z_fake, sigma).float()
            self.disc.train()
            # with an exact judge the rows are scored once, for the reward (reward: exact) and the correlation
            scores = None if self.judge is None else [self.judge.score(row) for row in roll.x.tolist()]
            rewards = (row_rewards(d_fake, m_fake, c.reward_clip) if c.reward == "discriminator"
                       else exact_rewards(scores, self.sample_log_likelihood(step, roll, times), c.reward_clip))
            advantages = group_normalised_advantages(rewards, c.group_size, c.advantage_clip)
            weight = omega(t, schedule) if c.omega_weight else torch.ones_like(t)
            if c.importance_weight:
                weight = weight / beta_density(t, c.tau_a, c.tau_b)

        with timer("student"):
            counts = [self._global_count(m) for m in roll.masked]
            steps = list(zip(targets, roll.log_probs, roll.masked, counts))
            if c.kl == "forward":
                kls = [forward_kl(target, p, m, n, self.shard) for target, p, m, n in steps]
            else:
                kls = [jeffreys(target, p, m, c.jeffreys_beta, n, self.shard) for target, p, m, n in steps]
            hs = [entropy(p, m, n, self.shard) for _, p, m, n in steps]
            lambdas = (c.lambda_kl, c.lambda_h) if c.regularisation else (0.0, 0.0)
            loss_s = student_loss(weight, advantages, roll.log_prob, kls, hs, kl_weights(c), *lambdas)
            self.student.backward(loss_s)
            self.student.step()
            if not step_skipped(self.student, self.student_opt):
                self.ema.update()

        clipped = ((d_fake.abs() >= c.reward_clip) & m_fake).sum() / m_fake.sum().clamp(min=1)
        exact = {} if scores is None else {"advantage/exact_correlation": exact_correlation(scores, advantages)}
        return {
            **exact,
            "discriminator/loss": loss_d.item(), "discriminator/accuracy": accuracy.item(),
            "reward/mean": rewards.mean().item(), "reward/std": rewards.std().item(),
            "reward/clipped_fraction": clipped.item(),
            "reward/group_std": rewards.view(-1, c.group_size).std(1).mean().item(),
            "advantage/abs_max": advantages.abs().max().item(),
            "advantage/clipped_fraction": (advantages.abs() >= c.advantage_clip).float().mean().item(),
            "student/loss": loss_s.item(), **{f"student/kl_step{k + 1}": kl.item() for k, kl in enumerate(kls)},
            "student/kl_last": kls[-1].item(), "student/entropy": (sum(hs) / len(hs)).item(),
            "student/log_prob": roll.log_prob.mean().item(), "student/omega_mean": weight.mean().item(),
            "student/tau_mean": tau.mean().item(), "discriminator/t_mean": t.mean().item(),
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
    student = teacher_copy(cfg, weights, cfg.model.dropout)
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
    student, student_opt = build_engine(student, cfg.optim, steps, ds_config(cfg))
    disc, disc_opt = build_engine(disc, cfg.discriminator_optim, steps,
                                  ds_config(cfg, grad_clip=cfg.discriminator_optim.grad_clip))
    teacher = build_frozen_engine(teacher, ds_config(cfg, zero_stage=3 if cfg.train.zero_stage == 3 else 0,
                                                     offload=cfg.distill.teacher_offload))
    return Distiller(cfg, d, student, student_opt, disc, disc_opt, teacher, teacher_dir, judge)


def distill(cfg: Config, d: Dist) -> dict:
    """Distil (or resume distilling) the teacher into a few-step student; returns the final metrics."""
    out_dir = Path(cfg.run.out_dir)
    loader = loader_from_config(cfg, "train", d.data_rank, d.data_size)
    val = loader_from_config(cfg, "val", d.data_rank, d.data_size, shuffle=False)
    tok = load_tokenizer(dataset_tokenizer_dir(cfg.data.path, cfg.data.retries))
    judge = exact_judge_for(cfg, tok)
    run = build_distiller(cfg, d, judge=judge)
    engines = {"student": run.student, "discriminator": run.disc}

    side = resume(cfg, d, engines, run.guard, run.ema, loader)
    if side is not None and side["teacher"] != str(run.teacher_dir):
        raise CheckpointError(f"{cfg.run.out_dir} was distilled from {side['teacher']}, the config now names "
                              f"{run.teacher_dir}; use another run.out_dir")
    step = side["step"] if side else 0
    tracker = start_tracking(cfg, d, side, f"teacher {run.teacher_dir}")

    stream = endless(loader)
    metrics: dict[str, float] = {}
    window: dict[str, float] = defaultdict(float)
    window_steps, timer, window_start = 0, PhaseTimer(d.device), time.perf_counter()
    rollout_tokens = cfg.distill.rollout_rows * cfg.model.seq_len * d.data_size
    bar = tqdm(total=cfg.train.max_steps, initial=step, disable=not d.is_main, file=sys.stderr,
               dynamic_ncols=True, desc="distill")
    if step == 0 and judge is not None:  # the exact curves' baseline: before any update the student is the teacher
        log_samples(tracker, out_dir, d, sample_texts(run.student, run.ema, cfg, d, 0, run.autocast, tok), 0, judge)
    run.student.train()
    run.disc.train()
    with PreemptionWatch(d.device) as preemption:
        while step < cfg.train.max_steps:
            x = next(stream)["input_ids"].to(d.device)
            values = run.iteration(step, x, timer)
            step += 1
            try:
                run.guard.record("discriminator", step_skipped(run.disc, run.disc_opt), step,
                                 values["discriminator/loss"])
                run.guard.record("student", step_skipped(run.student, run.student_opt), step, values["student/loss"])
            except NonFiniteError:
                tracker.log_metrics(run.guard.metrics(), step)
                tracker.close()
                raise
            for key, value in values.items():
                window[key] += value
            window_steps += 1
            bar.update(1)
            if due(step, cfg.train.log_every, cfg):
                keys = sorted(window) + [f"time/{p}_s" for p in PHASES]
                sums = all_reduce_sum(*(window[k] for k in sorted(window)), *(timer.seconds[p] for p in PHASES),
                                      device=d.device)
                elapsed = time.perf_counter() - window_start
                metrics = bin_means({k: v / (window_steps * d.world_size) for k, v in zip(keys, sums)})
                metrics.update(run.guard.metrics())
                metrics.update({"student/lr": run.student.get_lr()[0], "discriminator/lr": run.disc.get_lr()[0],
                                "time/iteration_s": elapsed / window_steps,
                                "train/rollout_tokens_per_s": rollout_tokens * window_steps / elapsed})
                record(tracker, out_dir, d, step, metrics)
                bar.set_postfix(d_acc=f"{metrics['discriminator/accuracy']:.2f}",
                                kl=f"{metrics['student/kl_last']:.3f}",
                                r=f"{metrics['reward/mean']:.2f}")
                window, window_steps = defaultdict(float), 0
                timer, window_start = PhaseTimer(d.device), time.perf_counter()
            if due(step, cfg.train.eval_every, cfg):
                evaluation = evaluate(run.student, run.ema, val, cfg, d, run.autocast)
                record_evaluation(tracker, out_dir, d, step, metrics, evaluation,
                                  f"step {step}: discriminator accuracy "
                                  f"{metrics.get('discriminator/accuracy', 0):.3f}, "
                                  f"reward {metrics.get('reward/mean', 0):+.3f}, "
                                  f"KL {metrics.get('student/kl_last', 0):.4f}, "
                                  f"EMA student val NELBO {evaluation['val/nelbo_nats']:.4f} nats/token")
            if due(step, cfg.train.sample_every, cfg):
                samples = sample_texts(run.student, run.ema, cfg, d, step, run.autocast, tok)
                log_samples(tracker, out_dir, d, samples, step, judge)
            end_of_step(cfg, d, step, engines, run.guard, lambda: side_state(run.guard, run.ema, loader, tracker,
                                                                 teacher=str(run.teacher_dir)), tracker, preemption)
    bar.close()
    finish(tracker, out_dir, d, {**CURVES, **exact_curves(cfg)})
    return {"step": step, **metrics}
