from pathlib import Path

import pytest
import yaml

from data_prep.config import ConfigError, PrepareConfig, save_resolved
from pipeline import config as C
from pipeline.config import EvaluateConfig, load_config


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = """
run: {name: t, seed: 3}
data: {path: /data/x, batch_size: 4}
model: {seq_len: 128, vocab_size: 4000}
"""


def test_loads_typed_values_and_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.run.seed == 3 and cfg.data.batch_size == 4 and cfg.model.seq_len == 128
    assert cfg.data.num_workers == 0 and cfg.model.tokenizer_fingerprint is None


def test_unknown_nested_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, GOOD.replace("batch_size: 4", "batch_sise: 4"), "typo.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "typo.yaml" in msg and "'data.batch_sise'" in msg and "did you mean 'data.batch_size'" in msg


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        load_config(write(tmp_path, GOOD + "trainer: {lr: 1}\n"))


@pytest.mark.parametrize("bad, key", [("batch_size: '4'", "data.batch_size"), ("batch_size: 4.5", "data.batch_size"),
                                      ("batch_size: true", "data.batch_size")])
def test_wrong_type_names_key(tmp_path, bad, key):
    with pytest.raises(ConfigError, match=f"'{key}' must be int"):
        load_config(write(tmp_path, GOOD.replace("batch_size: 4", bad)))


def test_cross_field_check_at_load_names_key_and_file(tmp_path):
    path = write(tmp_path, GOOD.replace("seq_len: 128", "seq_len: 2"), "short.yaml")
    with pytest.raises(ConfigError, match=r"short.yaml: model.seq_len: 2 is too small"):
        load_config(path)
    with pytest.raises(ConfigError, match="data.path: required"):
        load_config(write(tmp_path, GOOD.replace("path: /data/x, ", "")))


def test_set_overrides_are_typed_and_checked(tmp_path):
    path = write(tmp_path, GOOD)
    cfg = load_config(path, ["data.batch_size=16", "model.tokenizer_fingerprint=abc", "run.name=x y"])
    assert cfg.data.batch_size == 16 and cfg.model.tokenizer_fingerprint == "abc" and cfg.run.name == "x y"
    with pytest.raises(ConfigError, match="unknown key 'data.batchsize'"):
        load_config(path, ["data.batchsize=16"])
    with pytest.raises(ConfigError, match="'data.batch_size' must be int"):
        load_config(path, ["data.batch_size=many"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["data.batch_size"])
    with pytest.raises(ConfigError, match="must be positive"):
        load_config(path, ["data.batch_size=0"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["data.num_workers=2"])
    saved = save_resolved(cfg, tmp_path / "out")
    assert load_config(saved) == cfg
    assert yaml.safe_load(saved.read_text())["data"]["num_workers"] == 2


def test_literal_and_list_fields(tmp_path):
    base = "inputs: [a, b]\nout: o\ntokenizer: protein\n"
    cfg = load_config(write(tmp_path, base), cls=PrepareConfig)
    assert cfg.inputs == ["a", "b"] and cfg.val_fraction == 0.05
    with pytest.raises(ConfigError, match="'spm_model_type' must be one of bpe, unigram, char"):
        load_config(write(tmp_path, base + "spm_model_type: wordpiece\n"), cls=PrepareConfig)
    with pytest.raises(ConfigError, match="'inputs' must be a list"):
        load_config(write(tmp_path, "inputs: a\nout: o\n"), cls=PrepareConfig)


@pytest.mark.parametrize("spec, message", [("spm:12", "vocabulary size >= 300"), ("gpt2:/nonexistent", "no GPT-2 ranks"),
                                           ("bert", "is not one of")])
def test_tokenizer_spec_checked_at_load(tmp_path, spec, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, f"inputs: [a]\nout: o\ntokenizer: '{spec}'\n"), cls=PrepareConfig)


def test_cli_prints_resolved_or_fails_with_key(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    assert C.main([str(path), "--set", "data.batch_size=2"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["batch_size"] == 2
    assert C.main([str(path), "--set", "data.nope=1"]) == 2
    assert "unknown key 'data.nope'" in capsys.readouterr().err


def test_model_size_fills_dimensions_and_checks_heads(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["model.size=small", "model.num_layers=3"])
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads, cfg.model.cond_dim) == (768, 3, 12, 128)
    with pytest.raises(ConfigError, match=r"model.hidden_size: 768 does not split into model.num_heads = 5"):
        load_config(write(tmp_path, GOOD), ["model.size=small", "model.num_heads=5"])
    with pytest.raises(ConfigError, match="model.size: unknown size 'huge'"):
        load_config(write(tmp_path, GOOD), ["model.size=huge"])
    with pytest.raises(ConfigError, match="model.hidden_size: required when model.size is not given"):
        load_config(write(tmp_path, GOOD), ["model.size=null"])


def test_floats_written_without_a_dot_are_floats(tmp_path):
    cfg = load_config(write(tmp_path, GOOD + "optim: {lr: 3e-4}\n"))
    assert cfg.optim.lr == 3e-4
    with pytest.raises(ConfigError, match="'optim.lr' must be float"):
        load_config(write(tmp_path, GOOD + "optim: {lr: fast}\n"))


DISTILL = ["stage=distill", "distill.teacher=runs/t"]


@pytest.mark.parametrize("key,stage", [("optim.lr", []), ("optim.grad_clip", []), ("optim.weight_decay", []),
                                       ("train.max_loss_ratio", []), ("distill.tau_a", DISTILL)])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", ".nan", ".inf"])
def test_nan_and_inf_are_refused_for_every_float(tmp_path, key, stage, value):
    with pytest.raises(ConfigError, match=f"'{key}' must be a finite number"):
        load_config(write(tmp_path, GOOD), [*stage, f"{key}={value}"])


def test_step_counts_have_a_ceiling(tmp_path):
    with pytest.raises(ConfigError, match=r"train.sample_steps: \[8, 100000000\]: every step count must be in "
                                          r"\[1, 65,536\]"):
        load_config(write(tmp_path, GOOD), ["train.sample_steps=[8, 100000000]"])


def test_training_sections_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="'train.zero_stage' must be one of 0, 1, 2, 3"):
        load_config(write(tmp_path, GOOD), ["train.zero_stage=4"])
    with pytest.raises(ConfigError, match="train.ema: 1.0 must be in"):
        load_config(write(tmp_path, GOOD), ["train.ema=1.0"])
    with pytest.raises(ConfigError, match="optim.betas"):
        load_config(write(tmp_path, GOOD), ["optim.betas=[0.9]"])


# the stage configs of the entry points and the recipes (a recipe's ablation.yaml lists arms, not a stage)
SHIPPED = sorted(p for folder in ("configs", "recipes") for p in (Path(__file__).parents[2] / "launch" / folder).rglob("*.yaml")
                 if p.name != "ablation.yaml")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    data = yaml.safe_load(path.read_text())
    if "inputs" in data:  # an empty list: the recipe gives them on the command line (--input)
        cfg = load_config(path, ["out=/tmp/x"] + ([] if data["inputs"] else ["inputs=[/tmp/in.fasta]"]), PrepareConfig)
        assert cfg.inputs
    elif "stage" in data:
        assert load_config(path).stage == data["stage"]
    elif "grid" in data:
        from pipeline.stages.sweep import SweepConfig

        assert load_config(path, cls=SweepConfig).grid.shapes
    else:
        assert load_config(path, cls=EvaluateConfig).teacher


def test_unmasking_orders_are_checked_at_load(tmp_path):
    distill = GOOD + "stage: distill\ndistill: {teacher: /t, rollout_rows: 8, group_size: 4}\n"
    cfg = load_config(write(tmp_path, distill.replace("batch_size: 4", "batch_size: 2")),
                      ["distill.rollout_order=dispersed:5"])
    assert cfg.distill.rollout_order == "dispersed:5"
    for spec, message in (("sideways", "distill.rollout_order: unmasking order 'sideways': unknown order"),
                          ("dispersed:0", "distill.rollout_order: .* must be an integer >= 1"),
                          ("dispersed:129", "distill.rollout_order: .*distance 129 exceeds the sequence length 128")):
        with pytest.raises(ConfigError, match=message):
            load_config(write(tmp_path, distill.replace("batch_size: 4", "batch_size: 2")),
                        [f"distill.rollout_order={spec}"])
    evaluate = write(tmp_path, "teacher: t\ndata: d\n", "evaluate.yaml")
    assert load_config(evaluate, ["orders=[random, 'dispersed:3', margin]"], EvaluateConfig).orders[1] == "dispersed:3"
    for orders, message in (("[]", "orders: \\[\\] samples nothing"), ("[random, upward]", "unknown order 'upward'"),
                            ("[dispersed, 'dispersed:3']", "names an order twice")):
        with pytest.raises(ConfigError, match=message):
            load_config(evaluate, [f"orders={orders}"], EvaluateConfig)
