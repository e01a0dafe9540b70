import pytest
import torch

from models.dit import DiT, apply_rotary, rotary_cos_sin
from models.layers import DenseLayers
from models.sizes import SIZES


def build(size="unit", vocab=11, dropout=0.0, **kw):
    s = SIZES[size]
    return DiT(vocab, s.hidden_size, s.num_layers, s.num_heads, s.cond_dim, dropout=dropout, **kw)


def randomised(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def count(size, vocab=50257):
    with torch.device("meta"):
        return sum(p.numel() for p in build(size, vocab).parameters())


def test_paper_parameter_counts():
    assert count("small") == 169_627_218  # spec §8, exact
    assert round(count("medium") / 1e6, 1) == 424.5
    assert round(count("large") / 1e6, 1) == 872.9


def test_small_block_layout_matches_the_spec():
    with torch.device("meta"):
        block = build("small", 50257).blocks[0]
    assert sum(p.numel() for p in block.parameters()) == 7_677_696
    assert block.attn_qkv.bias is None and block.attn_out.bias is None
    assert block.mlp[0].bias is not None and block.norm1.weight.shape == (768,)


def test_zero_initialised_output_and_shapes():
    model = build()
    x = torch.randint(0, 12, (3, 9))
    out = model(x, torch.zeros(3))
    assert out.shape == (3, 9, 12) and torch.count_nonzero(out) == 0  # adaLN-Zero + zero output projection


def test_float_input_is_the_expected_embedding():
    model = randomised(build()).eval()
    x = torch.randint(0, 11, (2, 7))
    one_hot = torch.nn.functional.one_hot(x, 12).float() * 1e4  # softmax reproduces the token
    sigma = torch.tensor([0.0, 0.7])
    assert torch.allclose(model(one_hot, sigma), model(x, sigma), atol=1e-4)
    u = torch.randn(2, 7, 11)  # width V: real tokens only
    expected = torch.softmax(u, -1) @ model.vocab_embed.weight[:11]
    assert torch.allclose(model.vocab_embed(u), expected)
    with pytest.raises(ValueError, match="exceeds"):
        model.vocab_embed(torch.randn(2, 7, 13))


def test_attention_is_bidirectional_and_sigma_conditions():
    model = randomised(build()).eval()
    x = torch.randint(0, 11, (1, 8))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 11
    sigma = torch.zeros(1)
    assert not torch.allclose(model(x, sigma)[0, 0], model(y, sigma)[0, 0])  # first position sees the last
    assert not torch.allclose(model(x, sigma), model(x, torch.ones(1)))


def test_rotary_scores_depend_on_relative_position_only():
    cos, sin = rotary_cos_sin(32, 8, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, generator=g), torch.randn(8, generator=g)
    rq = apply_rotary(q.expand(1, 1, 32, 8), cos, sin)[0, 0]
    rk = apply_rotary(k.expand(1, 1, 32, 8), cos, sin)[0, 0]
    assert torch.allclose(rq[3] @ rk[1], rq[20] @ rk[18], atol=1e-5)
    assert not torch.allclose(rq[3] @ rk[1], rq[3] @ rk[2])
    assert torch.allclose(rq[0], q)  # position 0 is not rotated


def test_dropout_only_in_train_mode():
    model = randomised(build(dropout=0.5))
    x = torch.randint(0, 11, (2, 6))
    model.eval()
    assert torch.equal(model(x, torch.zeros(2)), model(x, torch.zeros(2)))
    model.train()
    assert not torch.equal(model(x, torch.zeros(2)), model(x, torch.zeros(2)))


def test_every_linear_layer_comes_from_the_factory():
    roles = []

    class Recording(DenseLayers):
        def linear(self, i, o, bias, role, zero_init=False):
            roles.append(role)
            return super().linear(i, o, bias, role, zero_init)

        def vocab_projection(self, dim, n):
            roles.append("vocab")
            return super().vocab_projection(dim, n)

    model = build(layers=Recording())
    per_block = ["qkv", "row", "column", "row", "replicated"]
    assert roles == per_block * 2 + ["vocab", "replicated"]
    factory_linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules()) - 2  # σ embedder's two
    assert factory_linears == len(roles)


def test_heads_must_divide_hidden():
    with pytest.raises(ValueError, match="must split into 3 heads"):
        DiT(11, 32, 1, 3)


def test_activation_checkpointing_gives_the_same_loss_and_gradients_with_dropout():
    from models.discriminator import Discriminator

    x = torch.randint(0, 12, (3, 10), generator=torch.Generator().manual_seed(1))
    results = []
    for checkpointing in (False, True):
        model = randomised(build(dropout=0.3, checkpointing=checkpointing))
        torch.manual_seed(2)
        disc = Discriminator(model, unfreeze_blocks=1)
        model.train()
        disc.train()
        torch.manual_seed(3)  # the same dropout masks in both runs, replayed by the recomputation
        loss = model(x, torch.ones(3)).logsumexp(-1).mean() + disc(x, torch.ones(3)).mean()
        loss.backward()
        grads = [p.grad.clone() for p in (*model.parameters(), *disc.parameters()) if p.grad is not None]
        results.append((loss.item(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == loss_b and len(grads_a) == len(grads_b) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_a, grads_b))
    assert any(g.abs().sum() > 0 for g in grads_a)
