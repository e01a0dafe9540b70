"""The latent-conditioned student (our extension, spec §11) in the distillation stage, its bundle and the sample
stage: it starts as the teacher, ξ's projection learns at its own rate, ZeRO-3 on two ranks matches one
process, and sampling is determined by the trajectory seed and the latent seed apart."""
import argparse
import json

import pytest
import torch

from data_prep.config import from_dict
from pipeline.config import Config
from pipeline.runtime.distributed import run_ranks
from tests.pipeline.stages.test_distill import _full, _run_distill, distill_settings

ITERATIONS = 3
LATENT = {"distill__latent": 8, "distill__latent_lr_scale": 100.0, "model__dropout": 0.0}


def _iterate_latent(rank, world_size, cfg_dict):
    import pipeline.stages.distill as stage
    from pipeline.runtime.data import loader_from_config
    from pipeline.runtime.distributed import setup

    cfg, d = from_dict(Config, cfg_dict), setup()
    run = stage.build_distiller(cfg, d)
    initial = _full(run.student.module)
    stream = iter(loader_from_config(cfg, "train", d.rank, d.world_size))
    steps = [run.iteration(step, next(stream)["input_ids"], stage.PhaseTimer(d.device)) for step in range(ITERATIONS)]
    after = _full(run.student.module)
    moved = {name: (after[name] - initial[name]).abs().max().item() for name in after}
    return {"steps": steps, "initial_projection": initial["latent_map.weight"].abs().max().item(),
            "projection_moved": moved.pop("latent_map.weight"), "others_moved": max(moved.values()),
            "lrs": run.student.get_lr()}


@pytest.mark.distributed
def test_the_latent_student_starts_as_its_teacher_and_zero3_on_two_ranks_matches_one_process(tiny_data, teacher,
                                                                                             tmp_path):
    changes = {**LATENT, "distill__latent_kl": "marginal", "distill__latent_match": 1.0,
               "distill__latent_match_draws": 4, "distill__latent_input": "positions",
               "distill__latent_match_at": "every", "distill__latent_redraw": "step"}  # keyed by the global row
    one = run_ranks(_iterate_latent, 1, distill_settings(tiny_data, teacher, tmp_path / "one", distill__rollout_rows=16,
                                                         **changes))[0]
    two = run_ranks(_iterate_latent, 2, distill_settings(tiny_data, teacher, tmp_path / "two", train__zero_stage=3,
                                                         **changes))
    for result in (one, *two):
        assert result["initial_projection"] == 0.0  # W_ξ = 0: the student is the teacher
        # before its first step the student predicts what the teacher does at every rollout state, for every ξ
        first = result["steps"][0]
        assert all(abs(first[f"student/kl_step{k}"]) < 1e-6 for k in (1, 2)), first
        assert result["steps"][-1]["student/kl_step2"] > 1e-6  # and then it moves away
        # the projection learns at 100x the learning rate (Adam's steps are about the learning rate in size)
        assert result["projection_moved"] > 20 * result["others_moved"] > 0
        assert result["lrs"][1] == pytest.approx(100 * result["lrs"][0])
    for step in range(ITERATIONS):
        for key in ("discriminator/loss", "student/loss", "student/kl_step1", "student/kl_step2", "student/entropy",
                    "reward/mean", "student/log_prob", "student/match_kl"):
            mean_of_ranks = (two[0]["steps"][step][key] + two[1]["steps"][step][key]) / 2
            assert mean_of_ranks == pytest.approx(one["steps"][step][key], rel=1e-4, abs=1e-6), (step, key)


def _first_iteration_per_kl(rank, world_size, cfg_dicts):
    """The first iteration's metrics of each config, each from a freshly built distiller."""
    import pipeline.stages.distill as stage
    from pipeline.runtime.data import loader_from_config
    from pipeline.runtime.distributed import setup

    d, out = setup(), []
    for cfg_dict in cfg_dicts:
        cfg = from_dict(Config, cfg_dict)
        run = stage.build_distiller(cfg, d)
        x = next(iter(loader_from_config(cfg, "train", d.rank, d.world_size)))["input_ids"]
        out.append(run.iteration(0, x, stage.PhaseTimer(d.device)))
    return out


@pytest.mark.distributed
def test_the_marginal_kl_regularises_the_groups_mixture_at_the_first_state_only(tiny_data, teacher, tmp_path):
    """From the same student and rollout (W_ξ drawn N(0, 0.3²), so each ξ predicts differently): at the all-[MASK]
    state KL(T ‖ mixture) is below the mean of KL(T ‖ q(· | ξ)) (convexity) and the mixture's entropy above the
    mean entropy (concavity); every later state is the same in both."""
    configs = [distill_settings(tiny_data, teacher, tmp_path / kl, distill__latent_kl=kl, distill__latent_init=0.3,
                                **LATENT) for kl in ("conditional", "marginal")]
    conditional, marginal = run_ranks(_first_iteration_per_kl, 1, configs)[0]
    assert marginal["student/kl_step1"] < conditional["student/kl_step1"] - 1e-4
    assert marginal["student/kl_step2"] == conditional["student/kl_step2"]
    assert marginal["student/log_prob"] == conditional["student/log_prob"]  # the same rollout
    assert marginal["student/entropy"] > conditional["student/entropy"]


@pytest.mark.distributed
def test_the_mixture_match_adds_the_first_steps_joint_fit_and_is_zero_for_the_teacher_against_its_own_draws(
        tiny_data, teacher, tmp_path):
    """The same student and rollout with and without the match: only the loss changes. A student that is still the
    teacher (W_ξ = 0), against the teacher's one-sub-step fill (independent draws from T(· | z_k)), has the
    teacher's likelihood for every ξ: the logged KL is 0, which checks which positions and rows are paired; and
    the same for a factorised student (the control arm), at the first step and at each row's drawn step."""
    shared = {**LATENT, "distill__latent_kl": "marginal"}
    itself = {"distill__latent_match": 1.0, "distill__latent_match_substeps": 1}
    every = {**itself, "distill__latent_match_at": "every"}
    configs = [distill_settings(tiny_data, teacher, tmp_path / name, **shared, **changes) for name, changes in (
        ("off", {"distill__latent_init": 0.3}), ("on", {"distill__latent_init": 0.3, "distill__latent_match": 2.0}),
        ("teacher", itself), ("teacher_every", {**every, "distill__latent_redraw": "step"}))]
    configs += [distill_settings(tiny_data, teacher, tmp_path / name, model__dropout=0.0, **changes)
                for name, changes in (("factorised", itself), ("factorised_every", every))]
    off, on, *identities = run_ranks(_first_iteration_per_kl, 1, configs)[0]
    assert "student/match_kl" not in off and on["student/match_kl"] > 0
    for key in ("student/log_prob", "student/kl_step1", "student/kl_step2", "student/entropy", "reward/mean"):
        assert on[key] == off[key], key
    assert on["student/loss"] != off["student/loss"]
    # without ξ: the product likelihood, the same identity
    assert all(abs(metrics["student/match_kl"]) < 1e-5 for metrics in identities), identities


def _joint_fill(rank, world_size, cfg_dict):
    import pipeline.stages.distill as stage
    from pipeline.runtime.distributed import setup

    run = stage.build_distiller(from_dict(Config, cfg_dict), setup())
    with torch.no_grad():
        roll = run.rollout(0).roll
        return roll, run.joint_fill(0, roll), run.mask_id


@pytest.mark.distributed
def test_the_match_at_every_step_fills_what_each_rows_drawn_step_revealed_from_the_state_it_started_in(
        tiny_data, teacher, tmp_path):
    cfg = distill_settings(tiny_data, teacher, tmp_path, distill__rollout_steps=4, distill__rollout_rows=16,
                           distill__latent_match=1.0, distill__latent_match_at="every")
    roll, fill, mask = run_ranks(_joint_fill, 1, cfg)[0]
    after = [*roll.states[1:], roll.x]
    assert len(set(fill.step.tolist())) > 1  # rows draw different steps
    for r, k in enumerate(fill.step.tolist()):
        assert torch.equal(fill.start[r], roll.states[k][r])
        assert torch.equal(fill.where[r], (roll.states[k][r] == mask) & (after[k][r] != mask))
    assert fill.where.any(1).all()  # each row's step revealed something (64 positions, 4 steps)
    assert torch.equal(fill.y[~fill.where], fill.start[~fill.where])  # only the revealed positions are filled
    assert (fill.y[fill.where] != mask).all() and (fill.log_t <= 0).all()


@pytest.mark.distributed
def test_a_latent_students_bundle_samples_by_trajectory_seed_and_latent_seed(tiny_data, teacher, tmp_path):
    from pipeline.bundle import load_bundle
    from pipeline.runtime.checkpoint import CheckpointError
    from pipeline.stages.convert import convert
    from pipeline.stages.distill import check_teacher
    from pipeline.stages.sample import main as sample_main

    cfg = distill_settings(tiny_data, teacher, tmp_path / "run", train__max_steps=3, distill__latent_redraw="step",
                           distill__latent_input="positions", **LATENT)
    assert "error" not in run_ranks(_run_distill, 1, cfg)[0]
    bundle = convert(tmp_path / "run", tmp_path / "bundle", online=True, log=lambda _: None)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["latent_dim"] == 8 and manifest["sampling"]["latent_redraw"] == "step"
    assert manifest["model"]["latent_input"] == "positions"
    loaded = load_bundle(bundle)
    assert loaded.model.latent_map.weight.abs().max() > 0 and loaded.online.latent_dim == 8
    assert loaded.model.latent_input == "positions" and loaded.model.latent_map.weight.shape[0] == 32  # hidden
    assert loaded.latent_shape == (loaded.seq_len, 8)  # a ξ_i for each position
    assert loaded.discriminator is not None and loaded.latent_redraw == "step"

    def draw(name, *extra):
        out = tmp_path / f"{name}.jsonl"
        assert sample_main(["--bundle", str(bundle), "--steps", "4", "--num-samples", "6", "--batch-size", "4",
                            "--seed", "3", "--out", str(out), *extra]) == 0
        return [json.loads(line) for line in out.read_text().splitlines()]

    base, again, other = draw("base"), draw("again", "--latent-seed", "3"), draw("other", "--latent-seed", "4")
    assert [r["token_ids"] for r in base] == [r["token_ids"] for r in again]  # --latent-seed defaults to --seed
    assert base[0]["latent_seed"] == 3 and other[0]["latent_seed"] == 4
    assert [r["token_ids"] for r in base] != [r["token_ids"] for r in other]  # another ξ, the same trajectory seed
    rgas = draw("rgas", "--sampler", "rgas", "--latent-seed", "4")
    assert len(rgas) == 6 and all(r["masks_left"] == 0 for r in rgas)
    # the diagnostics: ξ's information about the sample, the sampler's time per NFE, two ξ from one trajectory seed
    diagnose = load_script("launch/recipes/latent/diagnose.py")
    assert diagnose.main(["--bundle", f"latent={bundle}", "--bundle", f"teacher={teacher_bundle(teacher, tmp_path)}",
                          "--steps", "4", "--samples", "8", "--contrasts", "3", "--pairs", "2",
                          "--timing-rounds", "1", "--out", str(tmp_path / "diagnostics")]) == 0
    found = json.loads((tmp_path / "diagnostics.json").read_text())
    assert found["teacher"]["information"] == 0.0 and found["latent"]["information"] != 0.0
    assert len(found["latent"]["pairs"]) == 2 and "pairs" not in found["teacher"]
    assert "| latent | " in (tmp_path / "diagnostics.md").read_text() and "R^64×8, drawn once per step" in (
        tmp_path / "diagnostics.md").read_text()  # a ξ_i for each of the 64 positions
    # where ξ can act: both paths of the DiT, a larger shift moving the teacher's predictions further
    sensitivity = load_script("launch/recipes/latent/sensitivity.py")
    assert sensitivity.main(["--bundle", str(tmp_path / "teacher_bundle"), "--directions", "4",
                             "--out", str(tmp_path / "sensitivity.md")]) == 0
    rows = [line.split("|")[1:4] for line in (tmp_path / "sensitivity.md").read_text().splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 5 and all(float(rows[-1][k]) > float(rows[0][k]) >= 0 for k in (1, 2))
    # the mixture match alone, with ξ, without, and mixed by dropout masks: two windows of joint KLs each
    fitted = load_script("launch/recipes/latent/first_step_fit.py")
    assert fitted.main(["--bundle", str(tmp_path / "teacher_bundle"), "--iterations", "2", "--window", "1", "--rows",
                        "4", "--draws", "2", "--latent-input", "mask", "positions", "--dropout", "0.1",
                        "--out", str(tmp_path / "fit.md")]) == 0
    curves = [line for line in (tmp_path / "fit.md").read_text().splitlines()
              if line.startswith(("| factorised", "| ξ ∈ R^", "| ξ_i ∈ R^", "| dropout 0.1"))]
    assert len(curves) == 4 and all(len(line.split("|")) == 5 for line in curves)
    # at one drawn step per row: each row's own M draws, and the last window split into first and later steps
    assert fitted.main(["--bundle", str(tmp_path / "teacher_bundle"), "--iterations", "2", "--window", "1", "--rows",
                        "4", "--draws", "2", "--latent-input", "positions", "--at", "every", "--prefix-substeps", "2",
                        "--out", str(tmp_path / "fit_every.md")]) == 0
    every = [line for line in (tmp_path / "fit_every.md").read_text().splitlines()
             if line.startswith(("| factorised", "| ξ_i ∈ R^"))]
    assert len(every) == 2 and all(len(line.split("|")) == 7 for line in every)
    k, before, where = fitted.draw_steps(argparse.Namespace(at="every", rollout_steps=4), 64, 16)
    assert not (before & where).any() and not before[k == 0].any() and (k == 0).any()
    # each step's joint KL to the product of its marginals: one row a step, and the total
    correlation = load_script("launch/recipes/latent/step_correlation.py")
    assert correlation.main(["--bundle", str(tmp_path / "teacher_bundle"), "--steps", "4", "--rows", "8",
                             "--out", str(tmp_path / "steps.md")]) == 0
    steps = [line for line in (tmp_path / "steps.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert [line.split("|")[1].strip() for line in steps] == ["1", "2", "3", "4", "all"]
    # a latent student is no teacher: distilling from it is refused by name
    with pytest.raises(CheckpointError, match="latent-conditioned student"):
        check_teacher(from_dict(Config, distill_settings(tiny_data, bundle, tmp_path / "again")))


def load_script(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.rsplit("/", 1)[-1].removesuffix(".py"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def teacher_bundle(teacher, tmp_path):
    from pipeline.stages.convert import convert

    return convert(teacher, tmp_path / "teacher_bundle", log=lambda _: None)


def test_latent_settings_without_a_latent_are_refused_by_name():
    from data_prep.config import ConfigError
    from pipeline.config import DistillConfig

    for key, value in (("latent_kl", "marginal"), ("latent_redraw", "step"), ("latent_lr_scale", 10.0),
                       ("latent_init", 0.1)):
        with pytest.raises(ConfigError, match=f"distill.{key}: .* distill.latent is 0"):
            from_dict(DistillConfig, {"teacher": "t", key: value})
    for key, value in (("latent_match_substeps", 8), ("latent_match_draws", 4), ("latent_match_at", "every")):
        with pytest.raises(ConfigError, match=f"distill.{key}: {value} .* distill.latent_match is 0"):
            from_dict(DistillConfig, {"teacher": "t", key: value})
    with pytest.raises(ConfigError, match="distill.latent_input: mask .* distill.latent is 0"):
        from_dict(DistillConfig, {"teacher": "t", "latent_input": "mask"})
    with pytest.raises(ConfigError, match="distill.latent_match_substeps"):
        from_dict(DistillConfig, {"teacher": "t", "latent": 4, "latent_match": 1.0, "latent_match_substeps": 0})
    with pytest.raises(ConfigError, match="distill.latent: must be >= 0"):
        from_dict(DistillConfig, {"teacher": "t", "latent": -1})
    with pytest.raises(ConfigError, match="latent_redraw"):
        from_dict(DistillConfig, {"teacher": "t", "latent": 4, "latent_redraw": "token"})
    every = {"teacher": "t", "latent": 4, "latent_match": 1.0, "latent_match_at": "every"}
    with pytest.raises(ConfigError, match="distill.latent_match_at: every .* distill.latent_redraw: step"):
        from_dict(DistillConfig, every)
    with pytest.raises(ConfigError, match="distill.latent_match_at: every .* distill.latent_redraw: step"):
        from_dict(DistillConfig, {**every, "latent_redraw": "first"})  # 0 at the later states: nothing to mix
    assert from_dict(DistillConfig, {"teacher": "t", "latent": 4, "latent_redraw": "first"}).latent_redraw == "first"
    assert from_dict(DistillConfig, {**every, "latent_redraw": "step"}).latent_match_at == "every"
    assert from_dict(DistillConfig, {**every, "latent": 0}).latent_match_at == "every"  # the factorised control
    assert from_dict(DistillConfig, {"teacher": "t", "latent": 16, "latent_kl": "marginal"}).latent_kl == "marginal"


def test_the_projection_starts_at_zero_or_drawn_from_the_seed_at_the_given_scale():
    from types import SimpleNamespace

    import torch

    from pipeline.config import DistillConfig
    from pipeline.stages.distill import student_weights

    def projection(seed, **distill):
        cfg = SimpleNamespace(run=SimpleNamespace(seed=seed), model=SimpleNamespace(cond_dim=64, hidden_size=32),
                              distill=from_dict(DistillConfig, {"teacher": "t", "latent": 16, **distill}))
        return student_weights(cfg, {"w": torch.ones(1)})["latent_map.weight"]

    assert projection(0).shape == (64, 16) and not projection(0).any()
    drawn = projection(0, latent_init=0.1)
    assert torch.equal(drawn, projection(0, latent_init=0.1)) and not torch.equal(drawn, projection(1, latent_init=0.1))
    assert abs(drawn.std().item() - 0.1) < 0.01
