"""The latent-conditioned student (our extension, spec §11): ξ's projection starts at zero, ξ is drawn per row
and reaches every step of the sampler and the rollout, the group's ξ-averaged prediction is a mixture, and the
mixture match fits a ξ-mixture to the teacher's joint fill of a step (brute-force references)."""
import math

import pytest
import torch

from models.didi import (group_mixture, mixture_log_likelihood, rollout_times, student_rollout,
                         teacher_forced_log_prob, teacher_joint_sample)
from models.diffusion import LogLinearSchedule, subs_log_probs
from models.dit import latent_shape
from models.latent import LatentDraws
from models.sampler import ancestral_sample
from tests.models.test_dit import build, randomised

VOCAB, LENGTH, DIM = 11, 12, 4


@pytest.mark.parametrize("where", ["condition", "mask", "positions"])
def test_a_zero_projection_makes_the_latent_model_exactly_the_model_without_it(where):
    teacher = randomised(build(vocab=VOCAB))
    student = build(vocab=VOCAB, latent_dim=DIM, latent_input=where)
    missing = student.load_state_dict(teacher.state_dict(), strict=False).missing_keys
    assert missing == ["latent_map.weight"] and not student.latent_map.weight.any()  # zero-initialised
    x, sigma, shape = torch.randint(0, VOCAB + 1, (3, LENGTH)), torch.zeros(3), (3, *latent_shape(where, DIM, LENGTH))
    for xi in (None, torch.randn(shape), 100 * torch.randn(shape)):
        assert torch.equal(student(x, sigma, xi), teacher(x, sigma))
    with torch.no_grad():
        student.latent_map.weight.normal_()
    assert not torch.allclose(student(x, sigma, torch.randn(shape)), teacher(x, sigma), atol=1e-3)
    assert torch.equal(student(x, sigma, torch.zeros(shape)), teacher(x, sigma))  # ξ = 0: the centre


def test_a_latent_of_the_wrong_shape_or_for_a_model_without_one_is_refused():
    x, sigma = torch.randint(0, VOCAB, (2, LENGTH)), torch.zeros(2)
    with pytest.raises(ValueError, match="latent_dim 4"):
        build(vocab=VOCAB, latent_dim=DIM)(x, sigma, torch.randn(2, DIM + 1))
    with pytest.raises(ValueError, match=r"\(2, 12, 4\) \(positions"):  # one ξ_i per position
        build(vocab=VOCAB, latent_dim=DIM, latent_input="positions")(x, sigma, torch.randn(2, DIM))
    with pytest.raises(ValueError, match=r"\(2, 4\) \(mask"):
        build(vocab=VOCAB, latent_dim=DIM, latent_input="mask")(x, sigma, torch.randn(2, LENGTH, DIM))
    with pytest.raises(ValueError, match="no latent input"):
        build(vocab=VOCAB)(x, sigma, torch.randn(2, DIM))
    with pytest.raises(ValueError, match="latent_input 'token': one of condition, mask, positions"):
        build(vocab=VOCAB, latent_dim=DIM, latent_input="token")


def test_xi_shifts_the_mask_embeddings_only_or_the_adaln_vector():
    """A reference forward from the DiT's parts: h_i = E[x_i] + W_ξ ξ where x_i is [MASK] (mask), the same with
    position i's own ξ_i (positions), or c = SiLU(e_σ + W_ξ ξ) (condition)."""
    from models.dit import rotary_cos_sin

    x, sigma = torch.randint(0, VOCAB + 1, (3, LENGTH)), torch.rand(3)
    for where in ("mask", "positions", "condition"):
        model = randomised(build(vocab=VOCAB, latent_dim=DIM, latent_input=where))
        xi = torch.randn(3, *latent_shape(where, DIM, LENGTH))
        shift = xi @ model.latent_map.weight.T
        h, c = model.vocab_embed(x), model.sigma_map(sigma)
        masked = (x == VOCAB)[..., None].float()
        if where == "positions":
            h = h + masked * shift  # (3, L, hidden): each position its own
        else:
            h, c = (h + masked * shift[:, None, :], c) if where == "mask" else (h, c + shift)
        c = torch.nn.functional.silu(c)
        cos, sin = rotary_cos_sin(LENGTH, h.shape[2] // model.num_heads, h.device)
        for block in model.blocks:
            h = block(h, cos, sin, c)
        assert torch.allclose(model(x, sigma, xi), model.output_layer(h, c), atol=1e-5), where


def test_at_all_mask_a_sequences_xi_moves_every_position_alike_and_a_xi_per_position_does_not():
    """Every input embedding is the same at the all-[MASK] state, so attention (rotary only reweights identical
    values) keeps every position's hidden state equal: one prediction for all positions, with a per-sequence ξ
    too (it can make a step's tokens agree only by all leaning the same way). A ξ_i per position breaks that."""
    z, sigma = torch.full((2, LENGTH), VOCAB), torch.zeros(2)
    for where in ("condition", "mask", "positions"):
        model = randomised(build(vocab=VOCAB, latent_dim=DIM, latent_input=where))
        out = model(z, sigma, torch.randn(2, *latent_shape(where, DIM, LENGTH)))
        spread = (out - out[:, :1]).abs().max().item()
        assert (spread > 0.1) if where == "positions" else (spread < 1e-4), (where, spread)


def generators(seed, rows=3):
    return [torch.Generator().manual_seed(seed * 100 + i) for i in range(rows)]


def test_xi_is_kept_over_the_sequence_redrawn_at_every_step_or_zero_after_the_first_and_depends_on_each_rows_key():
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
    skipping = LatentDraws(3, DIM, generators(1), "cpu", "step")
    assert torch.equal(skipping(2), draws[2]) and torch.equal(skipping(2), draws[2])  # ξ_2 whether or not 0, 1 ran
    with pytest.raises(ValueError, match="step 1 after step 2"):
        skipping(1)
    only_first = LatentDraws(3, DIM, generators(1), "cpu", "first")
    assert torch.equal(only_first(0), first) and torch.equal(only_first(0), first)  # the sequence's ξ at step 0
    assert all(torch.equal(only_first(i), torch.zeros(3, DIM)) for i in (1, 2, 7))  # then the prior's centre
    assert torch.equal(LatentDraws(3, DIM, generators(1), "cpu", "first")(3), torch.zeros(3, DIM))
    with pytest.raises(ValueError, match="latent redraw 'token'"):
        LatentDraws(3, DIM, generators(1), "cpu", "token")
    per_position = LatentDraws(3, (LENGTH, DIM), generators(1), "cpu", "step")
    assert per_position(1).shape == (3, LENGTH, DIM) and not torch.equal(per_position(1), per_position(2))
    assert torch.equal(LatentDraws(1, (LENGTH, DIM), generators(1)[1:2], "cpu")(0),
                       LatentDraws(3, (LENGTH, DIM), generators(1), "cpu")(0)[1:2])


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


@pytest.mark.parametrize("redraw,shape", [("sequence", DIM), ("step", DIM), ("step", (LENGTH, DIM)),
                                          ("first", (LENGTH, DIM))])
def test_the_sampler_hands_each_row_its_own_xi_at_every_step(redraw, shape):
    steps, rows = 6, 3
    record = Recorder()
    z = torch.full((rows, LENGTH), VOCAB)
    z[1] = 0  # row 1 is already unmasked: the cache leaves it out after the first step
    out = ancestral_sample(record, z, steps, VOCAB, generator=generators(3, rows),
                           latent=LatentDraws(rows, shape, generators(2), "cpu", redraw))
    assert (out != VOCAB).all() and len(record.calls) == steps
    replay = LatentDraws(rows, shape, generators(2), "cpu", redraw)
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


def test_the_mixture_likelihood_is_the_log_mean_over_the_xi_draws_of_each_rows_product_likelihood():
    torch.manual_seed(0)
    draws, rows, length, vocab = 3, 5, 4, 5
    log_p = torch.randn(draws, length, vocab).log_softmax(-1)
    y, where = torch.randint(0, vocab, (rows, length)), torch.rand(rows, length) < 0.6
    found = mixture_log_likelihood(log_p, y, where)
    for r in range(rows):  # brute force: row r's revealed tokens under each ξ_j
        products = [math.exp(sum(log_p[j, i, y[r, i]].item() for i in range(length) if where[r, i]))
                    for j in range(draws)]
        assert found[r].item() == pytest.approx(math.log(sum(products) / draws), rel=1e-5)
    assert mixture_log_likelihood(log_p, y, torch.zeros_like(where)).abs().max() < 1e-6  # log 1
    product = mixture_log_likelihood(log_p[:1], y, where)  # one draw: the product likelihood
    assert torch.allclose(product, (log_p[0].expand(rows, -1, -1).gather(-1, y[..., None])[..., 0] * where).sum(-1))
    # each row its own M predictions (the match at every step): row r against its own draws only
    own = torch.randn(rows, draws, length, vocab).log_softmax(-1)
    found = mixture_log_likelihood(own, y, where)
    for r in range(rows):
        assert found[r].item() == pytest.approx(mixture_log_likelihood(own[r], y[r:r + 1], where[r:r + 1]).item())
    assert torch.allclose(mixture_log_likelihood(log_p.expand(rows, -1, -1, -1), y, where),
                          mixture_log_likelihood(log_p, y, where))


def copying_teacher(z):
    """Two positions, letters {0, 1}, [MASK] = 2: a masked position is 0 or 1 with probability ½ while the other
    is masked, and copies the other's letter with probability 0.9 once it is revealed (SUBS: a revealed
    position keeps its letter)."""
    probs = torch.zeros(*z.shape, 3)
    for i in range(2):
        other = z[:, 1 - i]
        copy = torch.stack([torch.where(other == 0, 0.9, 0.1), torch.where(other == 0, 0.1, 0.9)], -1)
        probs[:, i, :2] = torch.where((other == 2)[:, None], torch.full_like(copy, 0.5), copy)
        kept = z[:, i] != 2
        probs[kept, i] = torch.nn.functional.one_hot(z[kept, i], 3).float()
    return probs.log()


def test_the_teachers_joint_fill_is_its_substep_sampler_in_law_and_log_t_is_its_probability():
    """Two sub-steps: the positions share one (probability ½, independent draws: ¼ each pair) or not (the second
    copies the first: 0.45 / 0.05), so P(00) = P(11) = 0.35 and P(01) = P(10) = 0.15."""
    rows = 2000
    z = torch.full((rows, 2), 2)
    y, log_t = teacher_joint_sample(copying_teacher, z, torch.ones(rows, 2, dtype=torch.bool), 2, 2,
                                    generators(9, rows))
    agree = (y[:, 0] == y[:, 1]).float().mean().item()
    assert agree == pytest.approx(0.7, abs=0.03) and (y[:, 0] == 0).float().mean().item() == pytest.approx(0.5, abs=0.03)
    allowed = {True: {math.log(0.25), math.log(0.45)}, False: {math.log(0.25), math.log(0.05)}}
    for agrees, value in zip((y[:, 0] == y[:, 1]).tolist(), log_t.tolist()):
        assert min(abs(value - a) for a in allowed[agrees]) < 1e-5
    rows, z = 1000, z[:1000]
    one_step, log_one = teacher_joint_sample(copying_teacher, z, torch.ones(rows, 2, dtype=torch.bool), 1, 2,
                                             generators(9, rows))
    assert (one_step[:, 0] == one_step[:, 1]).float().mean().item() == pytest.approx(0.5, abs=0.05)  # independent
    assert torch.allclose(log_one, torch.full((rows,), math.log(0.25)))
    only_first = torch.tensor([[True, False]]).expand(rows, -1)
    partial, _ = teacher_joint_sample(copying_teacher, z, only_first, 2, 2, generators(9, rows))
    assert (partial[:, 1] == 2).all() and (partial[:, 0] != 2).all()  # only the marked positions are filled


def test_fitting_the_mixture_likelihood_makes_xi_coordinate_what_a_product_cannot():
    """Target: y = 00 or 11, each ½ (the teacher's joint fill of one step). The best product of per-position
    distributions is ¼ each (KL log 2 = 0.69); a student q(· | ξ) = softmax(W ξ + b) per position, fitted by
    the mixture likelihood over 16 ξ from a small random W, splits ξ's space between the two answers."""
    torch.manual_seed(0)
    draws, rows, dim = 16, 64, 2
    weight = (0.1 * torch.randn(2, 2, dim)).requires_grad_()  # (position, letter, ξ)
    bias = torch.zeros(2, 2, requires_grad=True)
    optimiser = torch.optim.Adam([weight, bias], lr=0.05)

    def log_q(xi):  # (draws, 2 positions, 2 letters)
        return (torch.einsum("pld,rd->rpl", weight, xi) + bias).log_softmax(-1)

    for _ in range(300):
        y = torch.randint(0, 2, (rows, 1)).expand(-1, 2)
        loss = -mixture_log_likelihood(log_q(torch.randn(draws, dim)), y, torch.ones(rows, 2, dtype=torch.bool)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():  # the mixture's exact law over the four pairs, by Monte Carlo over ξ
        q = log_q(torch.randn(20000, dim)).exp()
        pairs = torch.einsum("ra,rb->ab", q[:, 0], q[:, 1]) / q.shape[0]
    kl = 0.5 * (math.log(0.5 / pairs[0, 0].item()) + math.log(0.5 / pairs[1, 1].item()))
    assert kl < 0.25, pairs  # well below the best product's 0.69
