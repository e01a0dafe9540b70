import math

import pytest
import torch

from models.didi import (beta_density, coupled_corruption, discriminator_loss, entropy, forward_kl,
                         group_normalised_advantages, jeffreys, omega, row_rewards, sample_tau, student_loss,
                         masked_mean, rollout_grid, rollout_times, snap_tau, student_rollout)
from models.diffusion import NEG_INF, LogLinearSchedule, subs_log_probs

S = LogLinearSchedule()


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(n)]


def test_tau_is_beta_distributed_and_clamped():
    uniform = sample_tau(gens(4000))
    assert uniform.min() >= 0.02 and uniform.max() <= 0.98
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.02)
    assert ((uniform == 0.02).double().mean().item()) == pytest.approx(0.02, abs=0.01)  # the clamp's point mass
    skewed = sample_tau(gens(4000, 1), a=2.0, b=5.0)
    assert skewed.mean().item() == pytest.approx(2 / 7, abs=0.01)
    assert torch.equal(sample_tau(gens(3)), sample_tau(gens(3)))  # a row's draw depends on its generator only


def test_omega_is_analytic_and_clamped():
    tau = torch.tensor([0.02, 0.05, 0.5, 0.98], dtype=torch.float64)
    assert torch.allclose(omega(tau, S), torch.tensor([10.0, 10.0, 2.0, 1 / 0.98], dtype=torch.float64))


def test_beta_density_by_hand():
    assert beta_density(torch.tensor([0.3]), 1.0, 1.0).item() == pytest.approx(1.0)
    assert beta_density(torch.tensor([0.5]), 2.0, 2.0).item() == pytest.approx(1.5)  # 6 τ (1 − τ)


class TableStudent(torch.nn.Module):
    """A student whose logits are a learnable (L, V + 1) table, independent of z (enough for the rollout)."""

    def __init__(self, length, vocab, mask_id):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(length, vocab + 1, generator=torch.Generator().manual_seed(0)))
        self.mask_id = mask_id

    def forward(self, z):
        return subs_log_probs(self.table.expand(z.shape[0], -1, -1), z, self.mask_id)


def test_two_step_rollout_log_probability_counts_newly_unmasked_positions_only():
    V, L, rows = 6, 12, 8
    student = TableStudent(L, V, V)
    tau = torch.full((rows,), 0.5)
    r = student_rollout(student, rollout_times(tau), L, V, S, gens(rows))
    z_tau = r.states[1]
    assert r.x.shape == z_tau.shape == (rows, L) and r.log_prob.shape == (rows,) and len(r.log_probs) == 2
    table_lp = torch.log_softmax(student.table[:, :V], -1).detach()
    new1 = z_tau != V
    new2 = r.masked[1] & (r.x != V)
    expected = torch.stack([
        sum(table_lp[l, z_tau[i, l]] for l in range(L) if new1[i, l]) +
        sum(table_lp[l, r.x[i, l]] for l in range(L) if new2[i, l]) for i in range(rows)])
    assert torch.allclose(r.log_prob.detach(), expected, atol=1e-5)
    r.log_prob.sum().backward()
    assert torch.isfinite(student.table.grad).all()
    assert student.table.grad[:, V].abs().max() < 1e-6  # no gradient into the [MASK] logit
    assert torch.equal(r.masked[1], z_tau == V) and r.masked[0].all() and (r.states[0] == V).all()


def test_one_step_rollout_without_intermediate_state_samples_everything_from_p1():
    """The ablation's baseline: 1 → t0 in one student call; log P = Σ over unmasked positions of log p1(x)."""
    V, L, rows = 6, 12, 8
    student = TableStudent(L, V, V)
    calls = []
    r = student_rollout(lambda z: calls.append(z) or student(z), rollout_times(torch.full((rows,), 0.5), 1), L, V, S,
                        gens(rows))
    assert len(calls) == len(r.states) == len(r.log_probs) == len(r.masked) == 1 and r.masked[0].all()
    table_lp = torch.log_softmax(student.table[:, :V], -1).detach()
    new = r.x != V
    expected = torch.stack([sum(table_lp[l, r.x[i, l]] for l in range(L) if new[i, l]) for i in range(rows)])
    assert torch.allclose(r.log_prob.detach(), expected, atol=1e-5)
    # each position unmasks with probability (α_t0 − α_1)/(1 − α_1) ≈ 0.999 whatever τ
    many = student_rollout(TableStudent(64, V, V), rollout_times(torch.full((400,), 0.1), 1), 64, V, S, gens(400, 3))
    a1, a0 = S.alpha(torch.tensor(1.0)), S.alpha(torch.tensor(1e-3))
    assert (many.x != V).double().mean().item() == pytest.approx(((a0 - a1) / (1 - a1)).item(), abs=0.002)


def test_rollout_unmasks_at_the_scheduled_rates():
    V, L, rows = 5, 64, 400
    student = TableStudent(L, V, V)
    tau = torch.full((rows,), 0.3)
    r = student_rollout(student, rollout_times(tau), L, V, S, gens(rows, 2))
    a1, at = S.alpha(torch.tensor(1.0)), S.alpha(torch.tensor(0.3))
    assert (r.states[1] != V).double().mean().item() == pytest.approx(((at - a1) / (1 - a1)).item(), abs=0.01)
    still = (r.x == V).double().mean().item()  # (1 − α_t0)/(1 − α_τ) of the masked ones survive
    a0 = S.alpha(torch.tensor(1e-3))
    assert still == pytest.approx(((1 - at) / (1 - a1) * (1 - a0) / (1 - at)).item(), abs=0.003)


def test_n_step_rollout_runs_the_uniform_grid_and_snaps_tau_to_its_inner_times():
    """N = 4: times 1, 0.75, 0.5, 0.25 (t0 = 0), four student calls; each state keeps the scheduled share masked,
    log P sums the newly unmasked positions of every step; τ goes to the nearest inner time."""
    assert rollout_grid(4, 0.0) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert snap_tau(torch.tensor([0.98, 0.6, 0.4, 0.02]), 4, 0.0).tolist() == [0.75, 0.5, 0.5, 0.25]
    assert torch.equal(snap_tau(torch.tensor([0.3]), 2), torch.tensor([0.3]))  # the paper's τ is the rollout's
    V, L, rows = 5, 64, 400
    student = TableStudent(L, V, V)
    calls = []
    times = rollout_times(torch.full((rows,), 0.5), 4, 1e-3)
    r = student_rollout(lambda z: calls.append(z) or student(z), times, L, V, S, gens(rows, 4))
    assert len(calls) == len(r.states) == len(r.log_probs) == 4
    for k, t in enumerate(rollout_grid(4, 1e-3)[:-1]):  # before step k a position is masked w.p. 1 − α(t_k) = t_k
        assert r.masked[k].double().mean().item() == pytest.approx(t, abs=0.01)
    table_lp = torch.log_softmax(student.table[:, :V], -1).detach()
    new = [r.masked[k] & ((r.states[k + 1] if k + 1 < 4 else r.x) != V) for k in range(4)]
    expected = sum((table_lp.gather(1, r.x.clamp(max=V - 1).T).T * n).sum(1) for n in new)
    assert torch.allclose(r.log_prob.detach(), expected, atol=1e-4)


def test_coupled_corruption_uses_each_rows_tau_on_both_sides():
    rows, L = 3, 20_000
    tau = torch.tensor([0.1, 0.5, 0.9])
    x = torch.zeros(rows, L, dtype=torch.long)
    z_fake, z_real = coupled_corruption(x, x + 1, tau, 9, S, gens(rows))
    expected = 1 - S.alpha(tau)
    assert torch.allclose((z_fake == 9).double().mean(1), expected.double(), atol=0.01)
    assert torch.allclose((z_real == 9).double().mean(1), expected.double(), atol=0.01)
    assert not torch.equal(z_fake == 9, z_real == 9)  # fresh masks, same level
    assert ((z_real != 9) <= (z_real == 1)).all()


def test_discriminator_loss_by_hand():
    d_real, m_real = torch.tensor([[2.0, -1.0]]), torch.tensor([[True, False]])
    d_fake, m_fake = torch.tensor([[0.5, -3.0]]), torch.tensor([[True, True]])

    def bce(d, y):
        return -(y * math.log(1 / (1 + math.exp(-d))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-d))))

    expected = 0.5 * (bce(2.0, 0.9) + 0.5 * (bce(0.5, 0.1) + bce(-3.0, 0.1)))
    loss, acc = discriminator_loss(d_real, d_fake, m_real, m_fake)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert acc.item() == pytest.approx(2 / 3)  # real 2 > 0 right, fake 0.5 wrong, fake −3 right


def test_rewards_are_clipped_means_over_masked_positions():
    d = torch.tensor([[20.0, 1.0, -4.0], [-30.0, 0.0, 5.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    assert torch.allclose(row_rewards(d, m), torch.tensor([(8.0 + 1.0) / 2, -8.0]))


def test_group_normalised_advantages():
    adv = group_normalised_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0]), 4)
    sd = math.sqrt(5 / 3)
    assert torch.allclose(adv[:4], torch.tensor([-1.5, -0.5, 0.5, 1.5]) / sd, atol=1e-6)
    assert torch.allclose(adv[4:], torch.zeros(4))  # equal rewards: no advantage
    big = torch.zeros(20)
    big[0] = 100.0  # unclipped it would be (G − 1)/√G = 4.25
    assert group_normalised_advantages(big, 20)[0].item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="groups of G = 4"):
        group_normalised_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="G >= 2"):
        group_normalised_advantages(torch.zeros(6), 1)


def test_kl_jeffreys_and_entropy_by_hand():
    # SUBS rows: the [MASK] column holds NEG_INF, finite, so that 0 · log 0 terms vanish instead of giving NaN
    t = torch.tensor([[[math.log(0.5), math.log(0.5), NEG_INF]]])
    p = torch.tensor([[[math.log(0.25), math.log(0.75), NEG_INF]]])
    m = torch.tensor([[True]])
    kl_tp = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    kl_pt = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert forward_kl(t, p, m).item() == pytest.approx(kl_tp, rel=1e-5)
    assert forward_kl(t, t, m).item() == pytest.approx(0.0, abs=1e-7)
    assert jeffreys(t, p, m, beta=0.5).item() == pytest.approx(kl_tp + 0.5 * kl_pt, rel=1e-5)
    assert entropy(p, m).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), rel=1e-5)
    two = torch.cat([p, t], 1)
    assert entropy(two, torch.tensor([[False, True]])).item() == pytest.approx(math.log(2), rel=1e-5)


def test_student_loss_by_hand_and_detached_weights():
    w = torch.tensor([2.0, 1.0], requires_grad=True)
    a = torch.tensor([0.5, -1.0], requires_grad=True)
    lp = torch.tensor([-3.0, -4.0], requires_grad=True)
    kl1, kl2, h1, h2 = (torch.tensor(v, requires_grad=True) for v in (0.2, 0.4, 1.0, 3.0))
    loss = student_loss(w, a, lp, (kl1, kl2), (h1, h2))
    pg = -((2 * 0.5 * -3.0) + (1 * -1.0 * -4.0)) / 2
    assert loss.item() == pytest.approx(pg + 1.0 * (0.01 * 0.2 + 0.01 * 0.4) - 5e-4 * 0.5 * 4.0)
    loss.backward()
    assert w.grad is None and a.grad is None
    assert torch.allclose(lp.grad, torch.tensor([-1.0 * 0.5, 1.0]) / 2 * torch.tensor([2.0, 1.0]))
    assert kl1.grad.item() == pytest.approx(0.01) and h2.grad.item() == pytest.approx(-2.5e-4)
    # one rollout step (no intermediate state): c1·KL1 and the entropy of that step alone
    one = student_loss(w, a, lp, (kl1,), (h1,), (0.3,), lambda_kl=2.0, lambda_h=0.1)
    assert one.item() == pytest.approx(pg + 2.0 * 0.3 * 0.2 - 0.1 * 1.0)
    with pytest.raises(ValueError):
        student_loss(w, a, lp, (kl1,), (h1,), (0.01, 0.01))
    # the mixture match (our extension): minus λ_match times the rows' mean mixture log-likelihood, with grad
    match = torch.tensor([-2.0, -6.0], requires_grad=True)
    matched = student_loss(w, a, lp, (kl1,), (h1,), (0.3,), lambda_kl=2.0, lambda_h=0.1, match=match, lambda_match=3.0)
    assert matched.item() == pytest.approx(one.item() + 3.0 * 4.0)
    matched.backward()
    assert torch.allclose(match.grad, torch.tensor([-1.5, -1.5]))


def test_masked_means_with_a_shared_count_average_to_the_global_mean():
    """Ranks that divide by (global count / ranks) average to the one-process mean, gradients included."""
    values = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)).requires_grad_()
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[0, :4] = mask[1, 1] = mask[3, 2:4] = True  # 5 positions on the first "rank", 2 on the second
    global_mean = masked_mean(values, mask)
    shared = mask.sum() / 2
    halves = [masked_mean(values[i:i + 2], mask[i:i + 2], shared) for i in (0, 2)]
    assert torch.allclose((halves[0] + halves[1]) / 2, global_mean)
    (g_global,) = torch.autograd.grad(global_mean, values)
    (g_ranks,) = torch.autograd.grad((halves[0] + halves[1]) / 2, values)
    assert torch.allclose(g_global, g_ranks)
    assert not torch.allclose((masked_mean(values[:2], mask[:2]) + masked_mean(values[2:], mask[2:])) / 2,
                              global_mean)  # local counts would not


class CountingStudent(torch.nn.Module):
    """Logits that depend on z (how many of each token are revealed), so that the trajectory matters."""

    def __init__(self, length, vocab):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.base = torch.randn(length, vocab, generator=g)
        self.mix = torch.randn(vocab, vocab, generator=g)
        self.vocab = vocab

    def forward(self, z):
        counts = torch.nn.functional.one_hot(z, self.vocab + 1)[..., : self.vocab].sum(1).float()  # (B, V)
        logits = self.base + (counts @ self.mix)[:, None, :]
        logits = torch.cat([logits, torch.zeros(*logits.shape[:2], 1)], -1)
        return subs_log_probs(logits, z, self.vocab)


def test_teacher_forced_trajectories_average_to_the_students_marginal_likelihood():
    """q(x) by brute force over every unmasking pattern of a 2-step sampler (1 → 0.5 → 0: no leftovers), against
    the mean of P(x | τ) over many teacher-forced trajectories; and log q̂ as their log-mean-exp."""
    import itertools
    import math

    from models.didi import marginal_log_prob, teacher_forced_log_prob

    V, L = 2, 3
    student = CountingStudent(L, V)
    times = torch.tensor([[1.0, 0.5, 0.0]])
    a = S.alpha(times[0])
    p0 = ((a[1] - a[0]) / (1 - a[0])).item()

    def exact_q(x):
        total = 0.0
        for first in itertools.product((True, False), repeat=L):
            z0 = torch.full((1, L), V)
            z1 = torch.where(torch.tensor([first]), torch.tensor([x]), z0)
            lp0, lp1 = student(z0)[0], student(z1)[0]
            prob = math.prod(p0 if f else 1 - p0 for f in first)
            prob *= math.prod((lp0 if f else lp1)[i, x[i]].exp().item() for i, f in enumerate(first))
            total += prob
        return total

    qs = {x: exact_q(x) for x in itertools.product(range(V), repeat=L)}
    assert sum(qs.values()) == pytest.approx(1.0, abs=1e-6)
    x = max(qs, key=qs.get)
    rows = 3000
    forced = teacher_forced_log_prob(student, torch.tensor([x] * rows), times.expand(rows, -1), V, S, gens(rows, 9))
    assert forced.exp().mean().item() == pytest.approx(qs[x], rel=0.03)
    assert len(set(forced.tolist())) > 2  # the trajectories differ, and so do their probabilities
    halves = marginal_log_prob(forced.view(rows // 2, 2))  # K = 1500 trajectories for each of 2 rows
    assert halves.shape == (2,) and torch.allclose(halves, torch.tensor(math.log(qs[x]), dtype=torch.float64),
                                                   atol=0.05)
    assert marginal_log_prob(forced[None, :4]).tolist() == forced[:4].tolist()  # K = 1: the trajectory itself
