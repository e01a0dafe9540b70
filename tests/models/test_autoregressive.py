"""The causal DiT (the in-domain judge's backbone) and its next-token NLL, by hand."""
import math

import pytest
import torch

from models.autoregressive import next_token_nll
from tests.models.test_dit import build, randomised


def test_a_causal_dit_sees_only_the_past():
    model = randomised(build(causal=True)).eval()
    x = torch.randint(0, 11, (2, 9), generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 11
    with torch.no_grad():
        a, b = model(x, torch.zeros(2)), model(changed, torch.zeros(2))
    assert torch.equal(a[:, :5], b[:, :5])  # positions before the change do not see it
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    with torch.no_grad():  # the default backbone is non-causal: every position sees the change
        plain = randomised(build())
        assert not torch.allclose(plain(x, torch.zeros(2))[:, :5], plain(changed, torch.zeros(2))[:, :5])


def test_next_token_nll_by_hand():
    mask_id = 2  # V = 2 real tokens, [MASK] = 2
    logits = torch.tensor([[[0.0, math.log(3.0), 50.0], [math.log(2.0), 0.0, 50.0], [9.0, 9.0, 9.0]]])
    x = torch.tensor([[0, 1, 0]])
    nll = next_token_nll(logits, x, mask_id)
    # position 0 predicts x1 = 1 with p = 3/4, position 1 predicts x2 = 0 with p = 2/3; [MASK]'s logit is ignored
    assert nll.shape == (1, 2)
    assert nll[0].tolist() == pytest.approx([-math.log(3 / 4), -math.log(2 / 3)], rel=1e-6)
