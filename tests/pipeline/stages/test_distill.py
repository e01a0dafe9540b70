"""The distillation stage on the tiny dataset: ZeRO-3 invariants and the one-process match, resume, options,
non-finite steps and bad input."""
import json
import math
from collections import defaultdict

import pytest
import torch

from data_prep.config import from_dict, save_resolved
from pipeline.config import Config
from pipeline.measure.plots import read_metrics
from pipeline.runtime.distributed import run_ranks
from pipeline.runtime.weights import resolve_checkpoint
from pipeline.stages.train import main as train_main
from tests.conftest import one_process, run_killed_and_resumed
from tests.pipeline.stages.test_pretrain import settings

ITERATIONS = 3


def distill_settings(tiny_data, teacher, out, **changes) -> dict:
    cfg = {
        "stage": "distill",
        "run": {"name": "d", "out_dir": str(out), "seed": 0},
        "data": {"path": str(tiny_data)},
        "model": {"size": "unit", "seq_len": 64, "vocab_size": 500},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "discriminator_optim": {"lr": 1e-3, "warmup_steps": 2},
        "distill": {"teacher": str(teacher), "rollout_rows": 8, "group_size": 4, "unfreeze_blocks": 1},
        "train": {"max_steps": 6, "log_every": 1, "eval_every": 3, "eval_batches": 2, "sample_every": 1000,
                  "sample_steps": [4], "checkpoint_every": 3, "ema": 0.9},
        "tracking": {"backend": "none"},
    }
    for key, value in changes.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return cfg


def _full(module) -> dict[str, torch.Tensor]:
    """Dense copies of a module's parameters (gathered under ZeRO-3)."""
    import deepspeed

    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=hasattr(params[0], "ds_id")):
        return {name: p.detach().clone() for name, p in module.named_parameters()}


def _full_ema(run, world_size) -> list[torch.Tensor]:
    import torch.distributed as dist

    from pipeline.runtime.weights import consolidate

    pieces = [None] * world_size
    dist.all_gather_object(pieces, [s.clone() for s in run.ema.shadow])
    return [consolidate([rank[i] for rank in pieces], p.shape) for i, (_, p) in
            enumerate(_shapes(run.cfg).named_parameters())]


def _shapes(cfg):
    from pipeline.runtime.engine import build_model

    with torch.device("meta"):
        return build_model(cfg.model)


def _iterate(rank, world_size, cfg_dict):
    """Three iterations driven by hand, recording what the invariants need."""
    import pipeline.stages.distill as stage
    from pipeline.runtime.data import loader_from_config
    from pipeline.runtime.distributed import setup
    from pipeline.runtime.ema import ema_decay
    from pipeline.runtime.weights import ema_state_dict

    cfg, d = from_dict(Config, cfg_dict), setup()
    seen = {"advantages": [], "rewards": []}
    real_advantages = stage.group_normalised_advantages

    def spy(rewards, *args):
        out = real_advantages(rewards, *args)
        seen["rewards"].append(rewards.tolist())
        seen["advantages"].append(out.tolist())
        return out

    stage.group_normalised_advantages = spy
    run = stage.build_distiller(cfg, d)
    teacher = ema_state_dict(run.teacher_dir, _shapes(cfg))

    phase, disc_grads = {"now": None}, defaultdict(int)
    for p in run.disc.module.parameters():
        if p.requires_grad:
            p.register_hook(lambda g: disc_grads.__setitem__(phase["now"], disc_grads[phase["now"]] + 1))
    for name, engine in (("discriminator", run.disc), ("student", run.student)):
        def backward(loss, _name=name, _real=engine.backward):
            phase["now"] = _name
            out = _real(loss)
            phase["now"] = None
            return out
        engine.backward = backward

    stream = iter(loader_from_config(cfg, "train", d.rank, d.world_size))
    steps, ema_exact, ema_moved = [], [], []
    initial_ema = _full_ema(run, world_size)
    for step in range(ITERATIONS):
        before, decay = _full_ema(run, world_size), ema_decay(cfg.train.ema, run.ema.updates, cfg.train.ema_warmup)
        steps.append(run.iteration(step, next(stream)["input_ids"], stage.PhaseTimer(d.device)))
        online, after = list(_full(run.student.module).values()), _full_ema(run, world_size)
        ema_exact.append(all(torch.equal(a, b.mul(decay).add(o, alpha=1 - decay))
                             for a, b, o in zip(after, before, online)))
    ema_moved = [not torch.equal(a, b) for a, b in zip(_full_ema(run, world_size), initial_ema)]
    teacher_after, disc_after = _full(run.teacher.module), _full(run.disc.module)
    frozen = {n for n, p in run.disc.module.named_parameters() if not p.requires_grad}
    return {
        "steps": steps, "advantages": seen["advantages"], "rewards": seen["rewards"],
        "teacher_identical": all(torch.equal(teacher_after[n], teacher[n]) for n in teacher),
        "teacher_training": run.teacher.module.training,
        "frozen_trunk_identical": all(torch.equal(disc_after[n], teacher[n]) for n in frozen),
        "trainable_trunk_moved": any(not torch.equal(disc_after[n], teacher[n]) for n in disc_after
                                     if n not in frozen and n in teacher),
        "frozen_count": len(frozen), "ema_exact": ema_exact, "ema_moved": sum(ema_moved),
        "disc_grads": dict(disc_grads),
    }


@pytest.mark.distributed
def test_zero3_on_two_ranks_keeps_the_invariants_and_matches_one_process(tiny_data, teacher, tmp_path):
    one = run_ranks(_iterate, 1, distill_settings(tiny_data, teacher, tmp_path / "one", distill__rollout_rows=16))[0]
    two = run_ranks(_iterate, 2, distill_settings(tiny_data, teacher, tmp_path / "two", train__zero_stage=3,
                                                  distill__teacher_offload=True))
    for result in (one, *two):
        assert result["teacher_identical"] and not result["teacher_training"]
        assert result["frozen_trunk_identical"] and result["frozen_count"] > 0 and result["trainable_trunk_moved"]
        assert all(result["ema_exact"]) and result["ema_moved"] > 0  # the EMA follows the formula, and moves
        # the student's backward reaches no discriminator parameter; the discriminator's own backward does
        assert result["disc_grads"].get("student", 0) == 0 and result["disc_grads"]["discriminator"] > 0
    for step in range(ITERATIONS):
        # groups never straddle ranks: each rank's advantages are the one process's for the same global rows
        merged = two[0]["advantages"][step] + two[1]["advantages"][step]
        assert merged == pytest.approx(one["advantages"][step], abs=1e-4), step
        for key in ("discriminator/loss", "discriminator/accuracy", "student/loss", "student/kl_step1",
                    "student/kl_step2", "student/entropy", "reward/mean"):
            mean_of_ranks = (two[0]["steps"][step][key] + two[1]["steps"][step][key]) / 2
            assert mean_of_ranks == pytest.approx(one["steps"][step][key], rel=1e-4, abs=1e-6), (step, key)


def _run_distill(rank, world_size, cfg_dict):
    from pipeline.runtime.distributed import setup
    from pipeline.stages.distill import distill

    try:
        cfg = from_dict(Config, cfg_dict)
        return distill(cfg, setup(cfg.model.tensor_parallel))
    except RuntimeError as err:
        return {"error": str(err)}


@pytest.mark.distributed
def test_every_option_of_the_spec_runs_and_changes_the_run(tiny_data, teacher, tmp_path):
    base = run_ranks(_run_distill, 1, distill_settings(tiny_data, teacher, tmp_path / "base", train__max_steps=2,
                                                       train__checkpoint_every=1000))[0]
    options = {"real_side": "teacher", "teacher_sample_steps": 4, "kl": "jeffreys", "tau_per": "group",
               "importance_weight": True, "tau_a": 2.0, "sigma_to": "all"}
    changed = distill_settings(tiny_data, teacher, tmp_path / "options", train__max_steps=2,
                               train__checkpoint_every=1000)
    changed["distill"].update(options)
    result = run_ranks(_run_distill, 1, changed)[0]
    assert "error" not in result and math.isfinite(result["student/loss"])
    assert result["student/loss"] != base["student/loss"]
    assert result["discriminator/loss"] != base["discriminator/loss"]


ARMS = {"all": {}, "one_step": {"intermediate_state": False}, "uncoupled": {"coupled_time": False},
        "no_omega": {"omega_weight": False}, "unregularised": {"regularisation": False},
        "four_steps": {"rollout_steps": 4}, "all_positions": {"discriminator_positions": "all"},
        "dispersed": {"rollout_order": "dispersed:3"}}


def _first_iterations(rank, world_size, cfg_dict):
    """The first iteration of each ablation arm (same seed, same batch), with the student's rollout calls."""
    import copy

    import pipeline.stages.distill as stage
    from pipeline.runtime.data import loader_from_config
    from pipeline.runtime.distributed import setup

    d, results = setup(), {}
    for name, switch in ARMS.items():
        arm = copy.deepcopy(cfg_dict)
        arm["distill"].update(switch)
        cfg = from_dict(Config, arm)
        run, calls = stage.build_distiller(cfg, d), []
        log_probs = run._log_probs
        run._log_probs = lambda engine, z, latent=None: (calls.append(z.shape[0]) if engine is run.student else None,
                                                         log_probs(engine, z, latent))[1]
        x = next(iter(loader_from_config(cfg, "train", d.rank, d.world_size)))["input_ids"]
        results[name] = {**run.iteration(0, x, stage.PhaseTimer(d.device)),
                         "student_calls": calls.count(cfg.distill.rollout_rows)}
    return results


@pytest.mark.distributed
def test_ablation_switches_do_what_they_say(tiny_data, teacher, tmp_path):
    cfg = distill_settings(tiny_data, teacher, tmp_path)
    cfg["distill"].update(lambda_kl=100.0, lambda_h=0.5)  # regularisation terms well above the fp32 loss's rounding
    arms = run_ranks(_first_iterations, 1, cfg)[0]
    base = arms["all"]
    assert base["student_calls"] == 2 and base["discriminator/t_mean"] == base["student/tau_mean"]
    # one step 1 → t0: one student call, one KL term
    one = arms["one_step"]
    assert one["student_calls"] == 1 and "student/kl_step2" not in one and math.isfinite(one["student/loss"])
    assert one["student/kl_last"] == one["student/kl_step1"] and one["discriminator/loss"] != base["discriminator/loss"]
    # rollouts revealing in the dispersed order: the same calls and times, other samples
    dispersed = arms["dispersed"]
    assert dispersed["student_calls"] == 2 and dispersed["student/tau_mean"] == base["student/tau_mean"]
    assert dispersed["student/log_prob"] != base["student/log_prob"] and math.isfinite(dispersed["student/loss"])
    # uncoupled: same rollout, the discriminator (and ω) at independent times
    uncoupled = arms["uncoupled"]
    assert uncoupled["student/tau_mean"] == base["student/tau_mean"]
    assert uncoupled["discriminator/t_mean"] != base["student/tau_mean"]
    assert uncoupled["student/omega_mean"] != base["student/omega_mean"]
    assert uncoupled["discriminator/loss"] != base["discriminator/loss"]
    # ω off: weight 1, the discriminator's step untouched
    no_omega = arms["no_omega"]
    assert no_omega["student/omega_mean"] == 1.0 and base["student/omega_mean"] > 1.0
    assert no_omega["discriminator/loss"] == base["discriminator/loss"] and no_omega["student/loss"] != base["student/loss"]
    # regularisation off: the loss loses exactly λ_KL(c1 KL1 + c2 KL2) − λ_H H̄ (c1 = c2 = 0.01)
    off = arms["unregularised"]
    assert off["student/kl_step1"] == base["student/kl_step1"] and off["student/entropy"] == base["student/entropy"]
    terms = 100 * 0.01 * (base["student/kl_step1"] + base["student/kl_step2"]) - 0.5 * base["student/entropy"]
    assert base["student/loss"] - off["student/loss"] == pytest.approx(terms, rel=1e-3)
    # a 4-step rollout: four student calls, a KL at each state, the discriminator at the grid's inner times
    four = arms["four_steps"]
    assert four["student_calls"] == 4 and "student/kl_step4" in four and "student/kl_step5" not in four
    assert four["discriminator/t_mean"] == four["student/tau_mean"] != base["student/tau_mean"]
    # the discriminator at every position: the same rollout, another loss and reward
    every = arms["all_positions"]
    assert every["student/log_prob"] == base["student/log_prob"] and every["student/kl_step1"] == base["student/kl_step1"]
    assert every["discriminator/loss"] != base["discriminator/loss"] and every["reward/mean"] != base["reward/mean"]


@pytest.mark.distributed
def test_tau_per_group_gives_each_group_one_tau(tiny_data, teacher, tmp_path):
    run_ranks(_check_taus, 1, distill_settings(tiny_data, teacher, tmp_path, distill__tau_per="group"))


def _check_taus(rank, world_size, cfg_dict):
    from pipeline.runtime.distributed import setup
    from pipeline.runtime.randomness import ROLLOUT
    from pipeline.stages.distill import build_distiller

    cfg = from_dict(Config, cfg_dict)
    run = build_distiller(cfg, setup())
    tau = run.taus(5, run.generators(5, ROLLOUT, cfg.distill.rollout_rows)).view(-1, cfg.distill.group_size)
    assert torch.equal(tau, tau[:, :1].expand_as(tau)) and tau[0, 0] != tau[1, 0]


@pytest.mark.distributed
def test_killed_distillation_resumes_to_the_same_metrics(tiny_data, teacher, tmp_path):
    paths = {}
    for name in ("reference", "killed"):
        cfg = from_dict(Config, distill_settings(tiny_data, teacher, tmp_path / name, train__max_steps=24,
                                                 train__checkpoint_every=4, train__eval_every=12))
        paths[name] = save_resolved(cfg, tmp_path, f"{name}.yaml")
    run_killed_and_resumed(paths["reference"], paths["killed"], tmp_path / "killed")
    ref = read_metrics(tmp_path / "reference" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "killed" / "metrics.jsonl")
    compared = [k for k in ref[24] if not k.startswith(("time/", "train/rollout_tokens"))]
    assert "student/loss" in compared and "discriminator/loss" in compared and "val/nelbo_nats" in compared
    for step in range(5, 25):
        for key in compared:
            if key in ref[step]:
                assert resumed[step][key] == ref[step][key], (step, key)


def _run_with_nan_discriminator(rank, world_size, cfg_dict, poisoned_steps):
    """Distillation whose discriminator loss is NaN on the given (1-based) iterations."""
    import pipeline.stages.distill as stage

    real, calls = stage.discriminator_loss, []

    def discriminator_loss(*args, **kwargs):
        loss, accuracy = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan"), accuracy) if len(calls) in poisoned_steps else (loss, accuracy)

    stage.discriminator_loss = discriminator_loss
    try:
        return _run_distill(rank, world_size, cfg_dict)
    finally:
        stage.discriminator_loss = real


@pytest.mark.distributed
def test_non_finite_discriminator_steps_are_skipped_counted_and_stop_the_run(tiny_data, teacher, tmp_path):
    """At ZeRO-0 (the guarded optimizer skips) and ZeRO-2 (DeepSpeed skips without calling it)."""
    runs = []
    for z in (0, 2):
        runs += [(_run_with_nan_discriminator, (distill_settings(tiny_data, teacher, tmp_path / f"once{z}",
                                                                 train__max_steps=4, train__checkpoint_every=1000,
                                                                 train__zero_stage=z), {2})),
                 (_run_with_nan_discriminator, (distill_settings(tiny_data, teacher, tmp_path / f"stop{z}",
                                                                 train__max_steps=20, train__max_nonfinite=3,
                                                                 train__zero_stage=z), set(range(3, 30))))]
    results = run_ranks(one_process, 1, runs)[0]
    for once, stop in zip(results[::2], results[1::2]):
        assert once["discriminator/skipped_steps"] == 1 and once["student/skipped_steps"] == 0
        assert once["step"] == 4 and math.isfinite(once["student/loss"])
        assert "stopping at step 5: 3 consecutive discriminator steps had non-finite" in stop["error"]


@pytest.mark.distributed
def test_bad_distillation_configs_fail_before_any_work(tiny_data, teacher, tmp_path, capsys):
    path = save_resolved(from_dict(Config, distill_settings(tiny_data, teacher, tmp_path / "run")), tmp_path, "d.yaml")
    assert train_main(["--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 student samples per rank in groups of G = 4" in out and "2 data rows" not in out
    cases = [
        (["--set", "model.hidden_size=64"], "holds another model than the config's: hidden_size 32 there, 64 in"),
        (["--set", "model.num_layers=3", "--set", "distill.unfreeze_blocks=1"], "num_layers 2 there, 3 in the config"),
        (["--set", "distill.rollout_rows=10"], "distill.rollout_rows: 10 rows per rank is not a multiple of "
                                               "distill.group_size = 4"),
        (["--set", "distill.group_size=1", "--set", "distill.rollout_rows=4"], "G = 1, but group normalisation "
                                                                                "needs G >= 2"),
        (["--set", "distill.unfreeze_blocks=3"], "distill.unfreeze_blocks: 3 is more than the model's 2 blocks"),
        (["--set", f"distill.teacher={tmp_path / 'nothing'}"], "not a checkpoint"),
        (["--set", "data.batch_size=3"], "data.batch_size: 3 data rows per rank x distill.group_size 4 != "
                                         "distill.rollout_rows 8"),
        (["--set", "distill.teacher_offload=true"], "distill.teacher_offload: needs train.zero_stage: 3"),
        (["--set", "distill.kl=reverse"], "'distill.kl' must be one of forward, jeffreys"),
        (["--set", "distill.rollout_steps=1"], "a rollout has at least 2 steps"),
        (["--set", "distill.rollout_steps=4", "--set", "distill.intermediate_state=false"],
         "distill.intermediate_state: false is the one-step rollout"),
        (["--set", "distill.reward=exact"], "set train.exact_judge: markov:DIR"),
    ]
    # a teacher of another vocabulary (its metadata says so) or trained on another tokenizer
    other = tmp_path / "other_teacher"
    other.mkdir()
    meta = json.loads((resolve_checkpoint(teacher) / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "model": {**meta["model"], "vocab_size": 600}}))
    cases.append((["--set", f"distill.teacher={other}"], "vocab_size 600 there, 500 in the config"))
    retokenised = tmp_path / "retokenised_teacher"
    retokenised.mkdir()
    (retokenised / "meta.json").write_text(json.dumps({**meta, "tokenizer": "0123abcd"}))
    cases.append((["--set", f"distill.teacher={retokenised}"], "was trained with tokenizer 0123abcd"))
    for extra, message in cases:
        assert train_main(["--config", str(path), "--dry-run", *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    pretrain = save_resolved(from_dict(Config, settings(tiny_data, tmp_path / "p")), tmp_path, "p.yaml")
    assert train_main(["--config", str(pretrain), "--dry-run", "--set", "distill.group_size=4"]) == 2
    assert "belong to stage: distill, not pretrain" in capsys.readouterr().err


@pytest.mark.distributed
def test_mlflow_run_has_the_stage_metrics_samples_and_curves(tiny_data, teacher, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = distill_settings(tiny_data, teacher, tmp_path / "run", train__max_steps=2, train__sample_every=2,
                           train__sample_steps=[4, 8], tracking__backend="mlflow")
    cfg["tracking"].update(uri=uri, experiment="tests")
    assert "error" not in run_ranks(_run_distill, 1, cfg)[0]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.data.params["stage"] == "distill" and run.data.params["distill.group_size"] == "4"
    for key in ("discriminator/loss", "discriminator/accuracy", "reward/mean", "reward/std", "reward/clipped_fraction",
                "reward/group_std", "advantage/clipped_fraction", "student/kl_step1", "student/kl_step2", "student/entropy", "student/omega_mean",
                "student/skipped_steps", "discriminator/skipped_steps", "time/rollout_s", "time/teacher_s",
                "time/discriminator_s", "time/student_s", "train/rollout_tokens_per_s", "val/nelbo_nats",
                "advantage/tau_correlation"):
        assert key in run.data.metrics, key
    assert any(key.startswith("reward/mean_tau_") for key in run.data.metrics)
    assert not any(key.endswith((":sum", ":rows")) for key in run.data.metrics)
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert samples == {"samples/step_00000002_4steps.txt", "samples/step_00000002_8steps.txt"}
    assert "curves.png" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.distributed
def test_a_teacher_bundle_distils_exactly_as_its_checkpoint(tiny_data, teacher, tmp_path):
    from pipeline.stages.convert import convert

    bundle = convert(teacher, tmp_path / "teacher_bundle", log=lambda _: None)
    runs = {}
    for name, source in (("checkpoint", teacher), ("bundle", bundle)):
        cfg = distill_settings(tiny_data, source, tmp_path / name, train__max_steps=2, train__checkpoint_every=1000)
        runs[name] = run_ranks(_run_distill, 1, cfg)[0]
    assert "error" not in runs["bundle"]
    assert runs["bundle"]["student/loss"] == runs["checkpoint"]["student/loss"]
    assert runs["bundle"]["val/nelbo_nats"] == runs["checkpoint"]["val/nelbo_nats"]


def test_tau_diagnostics_by_hand():
    from pipeline.stages.distill import TAU_BIN_NAMES, bin_means, tau_diagnostics

    shared = tau_diagnostics(torch.tensor([0.2, 0.2, 0.8, 0.8]), torch.zeros(4), torch.tensor([1.0, -1.0, 0.5, -0.5]))
    assert abs(shared["advantage/tau_correlation"]) < 1e-7  # advantages sum to 0 in every group sharing a τ
    tau = torch.tensor([0.1, 0.25, 0.3, 1.0])
    aligned = tau_diagnostics(tau, torch.tensor([1.0, 2.0, 4.0, 8.0]), 3 * (tau - tau.mean()))
    assert aligned["advantage/tau_correlation"] == pytest.approx(1.0)
    # τ bins [0, .25), [.25, .5), [.5, .75), [.75, 1]: rows 1 | 2 | 0 | 1, and a window of two such iterations
    window = {k: 2 * v for k, v in aligned.items()}
    means = bin_means(window)
    assert [means.get(name) for name in TAU_BIN_NAMES] == [1.0, 3.0, None, 8.0]
    assert not any(k.endswith((":sum", ":rows")) for k in means)


def test_exact_reward_is_the_chain_log_likelihood_minus_the_rollout_log_probability():
    """reward: exact on a 2-state chain by hand: log p(x) − log P(x | order), an inner non-letter costing 8 nats."""
    import numpy as np

    from data_prep.synthetic import MarkovChain
    from data_prep.tokenizers import build_tokenizer
    from pipeline.measure.exact_judge import ExactJudge
    from pipeline.stages.distill import exact_correlation, exact_rewards

    tok = build_tokenizer("protein", iter(()))
    chain = MarkovChain("AC", np.array([[0.9, 0.1], [0.5, 0.5]]), np.array([5 / 6, 1 / 6]), [[0], [0, 1]])
    a, c = (tok.encode(x)[0] for x in "AC")
    x = torch.tensor([[tok.bos_id, a, a, c, tok.eos_id], [tok.bos_id, c, tok.eos_id, a, tok.eos_id]])
    log_prob = torch.tensor([-1.5, -0.25], requires_grad=True)
    judge = ExactJudge(chain, tok)
    scores = [judge.score(row) for row in x.tolist()]
    got = exact_rewards(scores, log_prob, 8.0)
    first = math.log(5 / 6) + math.log(0.9) + math.log(0.1) + 1.5
    second = math.log(1 / 6) - 8.0 + math.log(5 / 6) + 0.25  # C, a break (the inner [EOS]), then A afresh
    assert got.tolist() == pytest.approx([first, second], rel=1e-6) and not got.requires_grad
    # the advantages' correlation with the rows' exact quality (−NLL per letter): two rows, so ±1 by sign
    assert scores[0].nll / scores[0].letters < scores[1].nll / scores[1].letters
    assert exact_correlation(scores, torch.tensor([1.0, -1.0])) == pytest.approx(1.0)
    assert exact_correlation(scores, torch.tensor([-1.0, 1.0])) == pytest.approx(-1.0)
    assert exact_correlation(scores, torch.tensor([0.5, 0.5])) == 0.0  # a constant reward ranks nothing


def test_kl_weights_are_c1_at_the_first_state_and_c2_at_every_later_one():
    from pipeline.config import DistillConfig
    from pipeline.stages.distill import kl_weights

    assert kl_weights(DistillConfig(c1=0.1, c2=0.02, intermediate_state=False)) == (0.1,)
    assert kl_weights(DistillConfig(c1=0.1, c2=0.02)) == (0.1, 0.02)
    assert kl_weights(DistillConfig(c1=0.1, c2=0.02, rollout_steps=4)) == (0.1, 0.02, 0.02, 0.02)
