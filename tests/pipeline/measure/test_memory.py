import pytest
import torch
import torch.distributed as dist

from data_prep.config import from_dict
from models.dit import DiT
from models.sizes import SIZES
from pipeline.config import Config
from pipeline.measure.memory import (GiB, NOT_COUNTED, MetaAutocast, SavedTensors, ShardShapes, engine_bytes, main,
                                     plan, pretrain_pass, render, shard_parameters, state_bytes, student_terms)

VOCAB, LENGTH = 64, 16


def config(stage: str = "distill", **sections) -> Config:
    """A unit-size config of ``stage`` with ``sections`` merged over its defaults."""
    data = {"stage": stage, "data": {"path": "<planned>"},
            "model": {"size": "unit", "seq_len": LENGTH, "vocab_size": VOCAB}}
    if stage == "distill":
        data["distill"] = {"teacher": "<planned>", "rollout_rows": 4, "group_size": 2, "unfreeze_blocks": 1}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_dict(Config, data)


def dit_parameters() -> int:
    dims = SIZES["unit"]
    with torch.device("meta"):
        model = DiT(VOCAB, dims.hidden_size, dims.num_layers, dims.num_heads, dims.cond_dim)
    return sum(p.numel() for p in model.parameters())


def by_name(p) -> dict:
    return {m.name: m for m in p.models}


def test_zero_stages_keep_what_the_engines_hold():
    assert engine_bytes(1000, 0, 0, 4) == (4000, 4000, 8000)  # replicated weights, gradients, moments
    assert engine_bytes(1000, 0, 1, 4) == (4000, 4000, 3000)  # + fp32 partition and moments over D
    assert engine_bytes(1000, 0, 2, 4) == (4000, 1000, 3000)  # gradients partitioned too
    assert engine_bytes(1000, 0, 3, 4) == (1000, 1000, 2000)  # the fp32 partition is the parameter partition
    assert engine_bytes(1000, 500, 3, 4) == (1500, 1000, 2000)  # frozen parameters: weights only
    assert engine_bytes(1000, 500, 1, 4) == (6000, 4000, 3000)
    # the measured parameters + AdamW state (launch/bench/bench_pretrain.py)
    assert [state_bytes(1000, stage, 4) for stage in (0, 1, 2, 3)] == [12000, 7000, 7000, 3000]


def test_distill_plan_by_hand():
    p, dp, dims = dit_parameters(), 4, SIZES["unit"]
    with torch.device("meta"):
        dit = DiT(VOCAB, dims.hidden_size, dims.num_layers, dims.num_heads, dims.cond_dim)
    head = dims.hidden_size * dims.hidden_size + 2 * dims.hidden_size + 1  # SN-Linear(d, d) -> SN-Linear(d, 1)
    trainable = sum(x.numel() for x in dit.blocks[-1].parameters()) + head  # unfreeze_blocks 1, and the head
    frozen = p - sum(x.numel() for x in dit.output_layer.parameters()) - sum(
        x.numel() for x in dit.blocks[-1].parameters())  # the trunk without the teacher's output layer
    models = by_name(plan(config(train={"zero_stage": 3}), world_size=dp))
    assert models["teacher"].parameters == models["ema"].parameters == 4 * p / dp
    student = models["student"]
    assert (student.parameters, student.gradients, student.optimiser) == (4 * p / dp, 4 * p / dp, 8 * p / dp)
    disc = models["discriminator"]
    assert (disc.parameters, disc.gradients, disc.optimiser) == (
        4 * (trainable + frozen) / dp, 4 * trainable / dp, 8 * trainable / dp)


def test_teacher_offload_leaves_no_teacher_weights_on_the_device():
    kept = by_name(plan(config(train={"zero_stage": 3}), world_size=2))["teacher"]
    offloaded = by_name(plan(config(train={"zero_stage": 3}, distill={"teacher_offload": True}), 2))["teacher"]
    assert offloaded.parameters == 0 and offloaded.host == kept.parameters == 4 * dit_parameters() / 2
    assert offloaded.activations == kept.activations > 0  # its targets still live on the device


def test_teacher_is_replicated_below_zero_3():
    models = by_name(plan(config(train={"zero_stage": 1}), world_size=4))
    assert models["teacher"].parameters == models["ema"].parameters == 4 * dit_parameters()


def pretrain_activations(batch: int, checkpointing: bool = False) -> float:
    cfg = config("pretrain", data={"batch_size": batch}, model={"activation_checkpointing": checkpointing})
    return by_name(plan(cfg, world_size=1))["model"].activations


def test_activations_grow_linearly_with_the_batch_and_drop_with_checkpointing():
    a2, a4, a8 = (pretrain_activations(b) for b in (2, 4, 8))
    assert a2 < a4 < a8
    assert a8 - a4 == pytest.approx(2 * (a4 - a2), rel=0.02)  # affine: the rotary tables do not grow
    assert pretrain_activations(8, checkpointing=True) < 0.8 * a8


def test_tensor_parallel_splits_the_activations():
    dense = by_name(plan(config(train={"zero_stage": 3}), world_size=2))["student"].activations
    split = by_name(plan(config(train={"zero_stage": 3}, model={"tensor_parallel": 2}), world_size=2))
    assert dense / 2 < split["student"].activations < dense  # the residual stream stays whole on every rank


def student_activations(**distill) -> float:
    return by_name(plan(config(train={"zero_stage": 3}, distill=distill), world_size=2))["student"].activations


@pytest.mark.parametrize("where, extra_rows", [("first", 32), ("every", 8 * 4)])
def test_a_latent_student_and_its_match_cost_their_rows(where, extra_rows):
    """A latent student computes all 4 rows of the all-[MASK] state (not one shared row), and the mixture match
    adds its M draws at the first state, or M per rollout row at every step: counted in rows of the rollout."""
    factorised = student_activations()
    latent = dict(latent=16, latent_input="positions", latent_redraw="step")
    unshared = student_activations(**latent)
    per_row = (unshared - factorised) / 3
    assert per_row > 0
    draws = dict(latent_match_draws=32) if where == "first" else dict(latent_match_draws=8)
    matched = student_activations(**latent, latent_match=1, latent_match_at=where, **draws)
    assert matched - unshared == pytest.approx(extra_rows * per_row, rel=0.05)
    # without a latent the match reads the rollout's own predictions
    assert student_activations(latent_match=1, latent_match_at=where) == factorised


@pytest.fixture
def process_group():
    """``shard_parameters`` starts a one-process group for megatron's layers: end it after the test."""
    started = not dist.is_initialized()
    yield
    if started and dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("size, tensor_parallel", [("unit", 2), ("tiny", 2), ("tiny", 4)])
def test_shard_shapes_have_megatrons_parameter_count(process_group, size, tensor_parallel):
    dims = SIZES[size]
    with torch.device("meta"):
        model = DiT(50257, dims.hidden_size, dims.num_layers, dims.num_heads, dims.cond_dim,
                    layers=ShardShapes(tensor_parallel))
    assert sum(p.numel() for p in model.parameters()) == shard_parameters(size, 50257, tensor_parallel)


def test_plan_says_whether_it_fits():
    cfg = config(train={"zero_stage": 3})
    total = plan(cfg, 2).total
    assert plan(cfg, 2).fits is None
    assert plan(cfg, 2, device_bytes=2 * total).fits is True
    small = plan(cfg, 2, device_bytes=total / 2)
    assert small.fits is False
    text = render(small)
    assert "does NOT fit" in text and NOT_COUNTED in text and "| discriminator |" in text


def test_command_line_plans_a_config_and_names_a_typo(tmp_path, capsys):
    path = tmp_path / "pretrain.yaml"
    path.write_text(f"stage: pretrain\ndata: {{path: x}}\nmodel: {{size: unit, seq_len: {LENGTH}, "
                    f"vocab_size: {VOCAB}}}\n")
    assert main(["--config", str(path), "--world", "4", "--tp", "2", "--device-gib", "1",
                 "--out", str(tmp_path / "plan.md")]) == 0
    out = capsys.readouterr().out
    assert "TP 2 x DP 2" in out and "fits 1.00 GiB" in out and (tmp_path / "plan.md").read_text() == out
    assert main(["--config", str(path), "--set", "model.tensr_parallel=2"]) == 2
    assert "unknown key 'model.tensr_parallel'" in capsys.readouterr().err
    assert main(["--config", str(path), "--world", "3", "--tp", "2"]) == 2
    assert "does not divide" in capsys.readouterr().err


def paper_dit(checkpointing: bool, device: str) -> DiT:
    dims = SIZES["small"]
    with torch.device(device):
        return DiT(50257, dims.hidden_size, dims.num_layers, dims.num_heads, dims.cond_dim, dropout=0.0,
                   checkpointing=checkpointing)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("stage", ["pretrain", "distill"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_planned_activations_are_what_cuda_autocast_keeps(stage, checkpointing):
    """The meta-device count (``MetaAutocast``) against the bytes a real bf16 forward leaves allocated. One
    autocast region shares the bf16 weight casts between the rollout's two passes; the iteration autocasts each
    pass apart, as the plan counts (about 2 % more here). H200, torch 2.11: within 1.7 % of what is allocated."""
    cfg = from_dict(Config, {"stage": stage, "data": {"path": "x", "batch_size": 4 if stage == "pretrain" else None},
                             "model": {"size": "small", "seq_len": 1024, "vocab_size": 50257,
                                       "activation_checkpointing": checkpointing},
                             **({"distill": {"teacher": "x", "rollout_rows": 8, "group_size": 4}}
                                if stage == "distill" else {})})
    run = pretrain_pass if stage == "pretrain" else student_terms
    meta = paper_dit(False, "meta")  # as the planner builds it: checkpointing is applied to the count
    planned = SavedTensors([meta])
    with planned.recording(), MetaAutocast(torch.bfloat16):
        run(meta, cfg)
    model = paper_dit(checkpointing, "cuda")
    measured = SavedTensors([model])  # sees nothing inside checkpointed blocks: compared without checkpointing
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with measured.recording(), torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = run(model, cfg)
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - before
    print(f"{stage} checkpointing={checkpointing}: planned {planned.kept(checkpointing) / GiB:.3f} GiB kept "
          f"(+{planned.recomputed(checkpointing) / GiB:.3f} recomputed), saved under CUDA autocast "
          f"{measured.kept(False) / GiB:.3f}, allocated {kept / GiB:.3f}")
    if not checkpointing:
        assert planned.kept(False) == pytest.approx(measured.kept(False), rel=0.02)
    assert planned.kept(checkpointing) == pytest.approx(kept, rel=0.1)
    del outputs


def test_train_entry_point_plans_without_data(tmp_path, capsys, monkeypatch):
    from pipeline.stages.train import main as train_main

    path = tmp_path / "distill.yaml"  # data.path and the teacher do not exist: a plan needs neither
    path.write_text(f"stage: distill\ndata: {{path: nowhere}}\nmodel: {{size: unit, seq_len: {LENGTH}, "
                    f"vocab_size: {VOCAB}}}\ndistill: {{teacher: nowhere, unfreeze_blocks: 1}}\n")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert train_main(["--config", str(path), "--plan-memory", "--tp", "2", "--device-gib", "0.0001"]) == 0
    out = capsys.readouterr().out
    assert "4 ranks = TP 2 x DP 2" in out and "does NOT fit" in out and "| teacher |" in out
