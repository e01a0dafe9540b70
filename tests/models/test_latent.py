"""The latent-conditioned student (our extension, spec §11): ξ's projection starts at zero, ξ is drawn per row
and reaches every step of the sampler and the rollout, and the group's ξ-averaged prediction is a mixture."""
import math

import pytest
import torch

from models.didi import group_mixture, rollout_times, student_rollout, teacher_forced_log_prob
from models.diffusion import LogLinearSchedule, subs_log_probs
from models.latent import LatentDraws
from models.sampler import ancestral_sample
from tests.models.test_dit import build, randomised

VOCAB, LENGTH, DIM = 11, 12, 4


def test_a_zero_projection_makes_the_latent_model_exactly_the_model_without_it():
    teacher = randomised(build(vocab=VOCAB))
    student = build(vocab=VOCAB, latent_dim=DIM)
    missing = student.load_state_dict(teacher.state_dict(), strict=False).missing_keys
    assert missing == ["latent_map.weight"] and not student.latent_map.weight.any()  # zero-initialised
    x, sigma = torch.randint(0, VOCAB + 1, (3, LENGTH)), torch.zeros(3)
    for xi in (None, torch.randn(3, DIM), 100 * torch.randn(3, DIM)):
        assert torch.equal(student(x, sigma, xi), teacher(x, sigma))
    with torch.no_grad():
        student.latent_map.weight.normal_()
    assert not torch.allclose(student(x, sigma, torch.randn(3, DIM)), teacher(x, sigma), atol=1e-3)
    assert torch.equal(student(x, sigma, torch.zeros(3, DIM)), teacher(x, sigma))  # ξ = 0: the centre


def test_a_latent_of_the_wrong_shape_or_for_a_model_without_one_is_refused():
    x, sigma = torch.randint(0, VOCAB, (2, LENGTH)), torch.zeros(2)
    with pytest.raises(ValueError, match="latent_dim 4"):
        build(vocab=VOCAB, latent_dim=DIM)(x, sigma, torch.randn(2, DIM + 1))
    with pytest.raises(ValueError, match="no latent input"):
        build(vocab=VOCAB)(x, sigma, torch.randn(2, DIM))


def generators(seed, rows=3):
    return [torch.Generator().manual_seed(seed * 100 + i) for i in range(rows)]


def test_xi_is_kept_over_the_sequence_or_redrawn_at_every_step_and_depends_only_on_each_rows_key():
    once = LatentDraws(3, DIM, generators(1), "cpu")
    first = once(0)
    assert first.shape == (3, DIM) and torch.equal(once(1), first) and torch.equal(once(7), first)
    every = LatentDraws(3, DIM, generators(1), "cpu", "step")
    draws = [every(i) for i in range(3)]
    assert torch.equal(draws[0], first) and torch.equal(every(2), draws[2])  # a step's ξ is kept within the step
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    again = LatentDraws(3, DIM, generators(1), "cpu", "step")
    assert all(torch.equal(again(i), draws[i]) for i in range(3))  # determined by the seed
    assert torch.equal(LatentDraws(1, DIM, generators(1)[1:2], "cpu")(0), first[1:2])  # a row's own stream
    with pytest.raises(ValueError, match="latent redraw 'token'"):
        LatentDraws(3, DIM, generators(1), "cpu", "token")


def test_xi_is_a_standard_gaussian():
    xi = LatentDraws(4000, DIM, torch.Generator().manual_seed(0), "cpu")(0)
    assert xi.mean().abs() < 0.03 and (xi.var() - 1).abs() < 0.05


class Recorder:
    """A latent denoiser that records the ξ of every call and returns uniform SUBS log-probabilities."""

    def __init__(self):
        self.calls = []

    def __call__(self, z, xi):
        self.calls.append((z.shape[0], xi.clone()))
        return subs_log_probs(torch.zeros(*z.shape, VOCAB + 1), z, VOCAB)


@pytest.mark.parametrize("redraw", ["sequence", "step"])
def test_the_sampler_hands_each_row_its_own_xi_at_every_step(redraw):
    steps, rows = 6, 3
    record = Recorder()
    z = torch.full((rows, LENGTH), VOCAB)
    z[1] = 0  # row 1 is already unmasked: the cache leaves it out after the first step
    out = ancestral_sample(record, z, steps, VOCAB, generator=generators(3, rows),
                           latent=LatentDraws(rows, DIM, generators(2), "cpu", redraw))
    assert (out != VOCAB).all() and len(record.calls) == steps
    replay = LatentDraws(rows, DIM, generators(2), "cpu", redraw)
    for i, (count, xi) in enumerate(record.calls):
        expected = replay(i)
        assert count == (rows if i == 0 else 2)  # rows 0 and 2 (12 masks, 6 steps) change at every step
        assert torch.equal(xi, expected if i == 0 else expected[[0, 2]]), i  # the recomputed rows, their own ξ


def test_the_rollout_conditions_every_step_on_the_rows_xi():
    steps, rows = 4, 4
    seen = []

    def student(z, xi):
        seen.append(xi.clone())
        return subs_log_probs(torch.zeros(*z.shape, VOCAB + 1), z, VOCAB)

    latent = LatentDraws(rows, DIM, generators(4, rows), "cpu")
    times = rollout_times(torch.full((rows,), 0.5), steps)
    roll = student_rollout(student, times, LENGTH, VOCAB, LogLinearSchedule(), generators(5, rows), latent=latent)
    assert len(seen) == steps and all(torch.equal(xi, latent(0)) for xi in seen)
    assert (roll.x != VOCAB).all()
    seen.clear()
    fresh = LatentDraws(rows, DIM, generators(6, rows), "cpu")
    teacher_forced_log_prob(student, roll.x, times, VOCAB, LogLinearSchedule(), generators(7, rows), latent=fresh)
    assert len(seen) == steps and all(torch.equal(xi, fresh(0)) for xi in seen)


def test_the_group_mixture_is_the_log_of_the_groups_mean_probability():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.5, 0.25, 0.25], [0.25, 0.25, 0.5]])
    log_p = p.log()[:, None, :]  # 4 rows, 1 position, 3 columns
    mixture = group_mixture(log_p, 2).exp()[:, 0]
    assert torch.allclose(mixture[0], torch.tensor([0.4, 0.2, 0.4])) and torch.equal(mixture[0], mixture[1])
    assert torch.allclose(mixture[2], torch.tensor([0.375, 0.25, 0.375])) and torch.equal(mixture[2], mixture[3])
    same = torch.log_softmax(torch.randn(1, 5, 3), -1).expand(4, -1, -1)
    assert torch.allclose(group_mixture(same, 4), same, atol=1e-6)  # rows that agree are their own mixture
    assert math.isclose(group_mixture(log_p, 4).exp()[0, 0].sum().item(), 1.0, rel_tol=1e-6)
