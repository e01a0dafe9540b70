import math

import pytest
import torch

from pipeline.config import OptimConfig
from pipeline.runtime.ema import EMA, ema_decay
from pipeline.runtime.engine import GuardedAdamW, lr_factor


def test_lr_schedule_by_hand():
    warm = OptimConfig(warmup_steps=4, schedule="constant")
    assert [lr_factor(s, warm, 20) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    linear = OptimConfig(warmup_steps=4, schedule="linear")
    assert lr_factor(4, linear, 20) == 1.0 and lr_factor(12, linear, 20) == 0.5 and lr_factor(20, linear, 20) == 0.0
    cosine = OptimConfig(warmup_steps=0, schedule="cosine")
    assert lr_factor(5, cosine, 10) == pytest.approx(0.5) and lr_factor(10, cosine, 10) == pytest.approx(0.0)
    assert lr_factor(0, cosine, 10) == 1.0


def test_guarded_adamw_skips_non_finite_gradients_and_steps_otherwise():
    p = torch.nn.Parameter(torch.ones(3))
    opt = GuardedAdamW([p], lr=0.1, weight_decay=0.0)
    p.grad = torch.tensor([1.0, float("nan"), 1.0])
    opt.step()
    assert opt.last_step_skipped and torch.equal(p.data, torch.ones(3)) and not opt.state
    p.grad = torch.tensor([1.0, float("inf"), 1.0])
    opt.step()
    assert opt.last_step_skipped and torch.equal(p.data, torch.ones(3))
    p.grad = torch.ones(3)
    opt.step()
    assert not opt.last_step_skipped and torch.allclose(p.data, torch.full((3,), 0.9))  # Adam's first step: lr


def test_ema_decay_warm_up():
    assert ema_decay(0.999, 0, True) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay(0.999, 90, True) == pytest.approx(91 / 100)
    assert ema_decay(0.999, 10**6, True) == 0.999 and ema_decay(0.999, 0, False) == 0.999


def test_ema_follows_the_formula_and_swaps_back():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, beta=0.9, warmup=True)
    expected = [p.detach().clone() for p in model.parameters()]
    for k in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        decay = ema.update()
        assert decay == pytest.approx(min(0.9, (1 + k) / (10 + k)))
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
    assert all(torch.allclose(s, e) for s, e in zip(ema.shadow, expected))
    online = [p.detach().clone() for p in model.parameters()]
    with ema.swapped_in():
        assert all(torch.allclose(p, e) for p, e in zip(model.parameters(), expected))
    assert all(torch.equal(p, o) for p, o in zip(model.parameters(), online))
    assert not math.isclose(float(expected[0][0, 0]), float(online[0][0, 0]))
    restored = EMA(model, 0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 5 and all(torch.equal(a, b) for a, b in zip(restored.shadow, ema.shadow))
    with pytest.raises(ValueError, match="does not match"):
        EMA(torch.nn.Linear(3, 2), 0.9).load_state_dict(ema.state_dict())
