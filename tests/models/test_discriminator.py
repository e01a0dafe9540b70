import pytest
import torch

from models.discriminator import Discriminator, SpectralNormLinear
from models.dit import DiT
from models.sizes import SIZES


def teacher(size="unit", vocab=11, seed=0):
    s = SIZES[size]
    model = DiT(vocab, s.hidden_size, s.num_layers, s.num_heads, s.cond_dim, dropout=0.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_paper_discriminator_size():
    with torch.device("meta"):
        s = SIZES["small"]
        disc = Discriminator(DiT(50257, s.hidden_size, s.num_layers, s.num_heads, s.cond_dim), unfreeze_blocks=4)
    total = sum(p.numel() for p in disc.parameters())
    trainable = sum(p.numel() for p in disc.parameters() if p.requires_grad)
    assert round(total / 1e6, 1) == 131.4 and round(trainable / 1e6, 1) == 31.3  # spec §3 / §8


def test_trunk_is_a_frozen_copy_of_the_teacher_except_the_last_blocks():
    t = teacher()
    disc = Discriminator(t, unfreeze_blocks=1)
    assert torch.equal(disc.blocks[0].attn_qkv.weight, t.blocks[0].attn_qkv.weight)
    with torch.no_grad():
        t.blocks[0].attn_qkv.weight.add_(1.0)  # an independent copy
    assert not torch.equal(disc.blocks[0].attn_qkv.weight, t.blocks[0].attn_qkv.weight)
    x = torch.randint(0, 11, (2, 6))
    disc(x, torch.tensor([0.3, 1.2])).sum().backward()
    trained = {n for n, p in disc.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(n.startswith(("blocks.1.", "head.")) for n in trained)
    assert not any(p.requires_grad for p in disc.vocab_embed.parameters())
    assert not any(p.requires_grad for p in disc.sigma_map.parameters())


def test_sigma_reaches_only_the_trainable_blocks_by_default():
    t = teacher()
    x = torch.randint(0, 11, (2, 6))
    frozen_only = Discriminator(t, unfreeze_blocks=0).eval()
    assert torch.allclose(frozen_only(x, torch.zeros(2)), frozen_only(x, torch.full((2,), 2.0)))
    everywhere = Discriminator(t, unfreeze_blocks=0, sigma_to="all").eval()
    assert not torch.allclose(everywhere(x, torch.zeros(2)), everywhere(x, torch.full((2,), 2.0)))
    last = Discriminator(t, unfreeze_blocks=1).eval()
    assert not torch.allclose(last(x, torch.zeros(2)), last(x, torch.full((2,), 2.0)))
    assert last(x, torch.zeros(2)).shape == (2, 6)


def test_float_input_for_rgas():
    disc = Discriminator(teacher(), unfreeze_blocks=1).eval()
    x = torch.randint(0, 11, (2, 6))
    one_hot = torch.nn.functional.one_hot(x, 12).float() * 1e4
    assert torch.allclose(disc(one_hot, torch.ones(2)), disc(x, torch.ones(2)), atol=1e-4)


def test_spectral_norm_converges_to_the_largest_singular_value():
    layer = SpectralNormLinear(16, 8)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(8, 16, generator=torch.Generator().manual_seed(1)))
    for _ in range(200):
        layer(torch.zeros(1, 16))
    assert layer.sigma().item() == pytest.approx(torch.linalg.matrix_norm(layer.weight, 2).item(), rel=1e-4)
    effective = layer.weight / layer.sigma()
    assert torch.linalg.matrix_norm(effective, 2).item() == pytest.approx(1.0, rel=1e-4)
    layer.eval()
    u = layer.u.clone()
    layer(torch.zeros(1, 16))
    assert torch.equal(u, layer.u)  # no power iteration in eval mode
    assert {"u", "v"} <= set(layer.state_dict())


def test_discriminator_runs_under_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    disc = Discriminator(teacher(), unfreeze_blocks=1)
    x = torch.randint(0, 11, (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(disc(x, torch.ones(2))).all()  # training mode: the power iteration runs too
        low = disc.eval()(x, torch.ones(2))
    full = disc(x, torch.ones(2))
    assert (low.float() - full).abs().max() < 0.15 * full.abs().max()  # bf16 through the blocks: a few %


def test_unfreeze_blocks_beyond_the_depth_is_refused():
    with pytest.raises(ValueError, match="between 0 and the depth 2"):
        Discriminator(teacher(), unfreeze_blocks=3)
