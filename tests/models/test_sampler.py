import pytest
import torch

from models.diffusion import NEG_INF, LogLinearSchedule
from models.sampler import SamplerStats, ancestral_sample, ancestral_step, sample_categorical, sample_where, time_grid

V = 5
MASK = V


def uniform_denoiser(z):
    lp = torch.full((*z.shape, V + 1), -torch.log(torch.tensor(float(V))).item())
    lp[..., MASK] = NEG_INF
    return lp


def test_masked_fraction_follows_the_schedule():
    schedule = LogLinearSchedule()
    z = torch.full((4000, 16), MASK)
    seen = {}
    ancestral_sample(uniform_denoiser, z, 8, MASK, schedule, torch.Generator().manual_seed(0),
                     on_step=lambda i, t, zi: seen.__setitem__(t, (zi == MASK).double().mean().item()))
    alpha_1 = schedule.alpha(torch.tensor(1.0, dtype=torch.float64))
    for t, fraction in seen.items():
        expected = (1 - schedule.alpha(torch.tensor(t, dtype=torch.float64))) / (1 - alpha_1)
        assert fraction == pytest.approx(expected.item(), abs=0.01)  # sd about 0.002 on 64,000 positions
    assert len(seen) == 8


def test_caching_gives_identical_samples_with_fewer_calls():
    def denoiser(z):  # deterministic in z, not time-conditioned
        known = (z != MASK).sum(1).float()
        scale = (known[:, None] + torch.arange(z.shape[1]))[..., None] / 10  # (B, L, 1)
        lp = torch.log_softmax(scale * torch.arange(V).float(), -1)
        return torch.cat([lp, torch.full((*z.shape, 1), NEG_INF)], -1)

    z = torch.full((3, 4), MASK)
    with_cache, without = SamplerStats(), SamplerStats()
    changed = []
    a = ancestral_sample(denoiser, z, 64, MASK, generator=torch.Generator().manual_seed(5), stats=with_cache,
                         on_step=lambda i, t, zi: changed.append(zi.clone()))
    b = ancestral_sample(denoiser, z, 64, MASK, generator=torch.Generator().manual_seed(5), cache=False,
                         stats=without)
    assert torch.equal(a, b)
    assert without.nfe == 64 and with_cache.nfe < 20
    states = [z] + changed
    for row in range(3):  # the honest count: one evaluation per distinct state of the row
        changes = sum(not torch.equal(states[i][row], states[i + 1][row]) for i in range(63))
        assert with_cache.row_nfe[row] == 1 + changes
    any_row_changed = sum(not torch.equal(states[i], states[i + 1]) for i in range(63))
    assert with_cache.row_nfe.max() < 1 + any_row_changed  # a row is not recomputed when only others change


def test_noise_removal_fills_every_mask_and_is_counted_apart():
    stats = SamplerStats()
    out = ancestral_sample(uniform_denoiser, torch.full((3, 7), MASK), 0, MASK, stats=stats)
    assert (out != MASK).all() and stats.nfe == 0 and stats.noise_removal_calls == 1
    stats = SamplerStats()
    prefix = torch.tensor([[1, 2, 3]])
    assert torch.equal(ancestral_sample(uniform_denoiser, prefix, 4, MASK, stats=stats), prefix)
    assert stats.noise_removal_calls == 0


def test_categorical_draws_match_the_probabilities():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05]).expand(200_000, 4) * 7.0  # unnormalised is fine
    draws = sample_categorical(probs, torch.Generator().manual_seed(2))
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64), atol=0.004)


def test_time_grid():
    grid = time_grid(4)
    assert grid[0] == 1.0 and grid[-1] == pytest.approx(1e-5) and len(grid) == 5


def test_one_generator_per_row_makes_each_rows_draw_depend_on_its_own_key_only():
    probs = torch.rand(3, 5, 7)
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    together = sample_categorical(probs, gens(10, 11, 12))
    assert torch.equal(together[1], sample_categorical(probs[1], torch.Generator().manual_seed(11)))
    assert torch.equal(sample_categorical(probs[1:], gens(11, 12)), together[1:])  # another split, same rows


def test_draws_are_made_only_where_asked():
    probs = torch.rand(2, 6, 5)
    where = torch.tensor([[True, False, True, False, False, True], [False] * 6])
    draws = sample_where(probs, where, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    assert (draws[~where] == 0).all()
    # the first row's draws are those of a race over its three selected positions, from its own generator
    assert torch.equal(draws[0, where[0]], sample_categorical(probs[0, where[0]], torch.Generator().manual_seed(1)))
    shared = sample_where(probs, where, torch.Generator().manual_seed(3), transform=lambda p: p * 0 + torch.eye(5)[4])
    assert (shared[where] == 4).all()  # the transform applies to the selected rows before the draw


def test_one_step_has_the_spec_transition_probabilities():
    """p(z_s = v) = (α_s − α_t)/(1 − α_t) · x_θ[v], p(z_s = MASK) = (1 − α_s)/(1 − α_t); unmasked positions copied."""
    schedule = LogLinearSchedule()
    x0 = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0, 0.0])  # V = 5 real tokens, [MASK] = 5 has probability 0
    z = torch.full((100_000, 2), MASK)
    z[:, 1] = 3
    out = ancestral_step(z, x0.expand(*z.shape, V + 1), 0.8, 0.3, MASK, schedule, torch.Generator().manual_seed(4))
    alpha = lambda t: schedule.alpha(torch.tensor(t, dtype=torch.float64)).item()  # noqa: E731
    unmask = (alpha(0.3) - alpha(0.8)) / (1 - alpha(0.8))
    expected = torch.cat([unmask * x0[:V].double(), torch.tensor([1 - unmask], dtype=torch.float64)])
    freq = torch.bincount(out[:, 0], minlength=V + 1).double() / len(out)
    assert torch.allclose(freq, expected, atol=0.005)  # sd at most 0.0016
    assert (out[:, 1] == 3).all()
