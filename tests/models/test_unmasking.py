import itertools

import pytest
import torch

from models.diffusion import NEG_INF, LogLinearSchedule, subs_log_probs
from models.didi import rollout_times, student_rollout
from models.rgas import RGASSettings, rgas_sample
from models.sampler import SamplerStats, ancestral_sample
from models.unmasking import (UnmaskingOrder, confidence_score, dispersed_choice, reveal, reveal_count,
                              top_k_where)
from tests.models.test_sampler import MASK, V, uniform_denoiser


def test_order_specs_parse_and_bad_ones_are_named():
    assert UnmaskingOrder.parse("random") == UnmaskingOrder("random")
    assert UnmaskingOrder.parse("dispersed") == UnmaskingOrder("dispersed", 3)
    assert UnmaskingOrder.parse("dispersed:5").distance == 5
    assert str(UnmaskingOrder.parse("dispersed:5")) == "dispersed:5" and str(UnmaskingOrder.parse("margin")) == "margin"
    for spec, words in (("randon", "unknown order 'randon'"), ("dispersed:0", ">= 1"), ("dispersed:x", ">= 1"),
                        ("dispersed:-2", ">= 1"), ("margin:2", "only dispersed")):
        with pytest.raises(ValueError, match=words):
            UnmaskingOrder.parse(spec)
    with pytest.raises(ValueError, match="distance 9 exceeds the sequence length 8"):
        UnmaskingOrder.parse("dispersed:9").check_length(8)
    assert UnmaskingOrder.parse("dispersed:8").check_length(8).distance == 8


def test_reveal_count_by_hand():
    masked = torch.tensor([[True] * 64, [True] * 10 + [False] * 54, [False] * 64])
    assert reveal_count(masked, torch.tensor(1 / 8), False).tolist() == [8, 1, 0]  # 10/8 = 1.25 -> 1
    assert reveal_count(masked, torch.tensor([0.5, 0.25, 0.5]), False).tolist() == [32, 3, 0]  # 2.5 -> 3
    assert reveal_count(masked, torch.tensor(0.01), True).tolist() == [64, 10, 0]


def greedy_reference(masked: list[bool], priority: list[float], k: int, distance: int) -> set[int]:
    """The sequential rule, spelled out: take positions by priority unless a taken one of the same masked run lies
    within distance < d; then fill up with the skipped ones by priority."""
    order = sorted((i for i, m in enumerate(masked) if m), key=lambda i: -priority[i])
    taken = []
    for i in order:
        same_run_near = [j for j in taken if abs(i - j) < distance and all(masked[min(i, j): max(i, j) + 1])]
        if not same_run_near:
            taken.append(i)
    taken = taken[:k]
    rest = [i for i in order if i not in taken]
    return set(taken + rest[: k - len(taken)])


def test_dispersed_choice_equals_the_sequential_greedy_rule():
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        length = int(torch.randint(1, 30, (1,), generator=g))
        masked = torch.rand(3, length, generator=g) < 0.7
        priority = torch.rand(3, length, generator=g, dtype=torch.float64)
        distance = int(torch.randint(1, 6, (1,), generator=g))
        k = torch.stack([torch.randint(0, int(m) + 1, (1,), generator=g)[0] for m in masked.sum(1)])
        got = dispersed_choice(masked, priority, k, distance)
        for b in range(3):
            want = greedy_reference(masked[b].tolist(), priority[b].tolist(), int(k[b]), distance)
            assert set(got[b].nonzero().flatten().tolist()) == want, (trial, b)


def test_dispersed_keeps_the_positions_of_a_step_apart_and_counts_follow_the_schedule():
    z = torch.full((50, 64), MASK)
    states = [z]
    ancestral_sample(uniform_denoiser, z, 8, MASK, generator=torch.Generator().manual_seed(1),
                     order=UnmaskingOrder("dispersed", 3), on_step=lambda i, t, zi: states.append(zi.clone()))
    revealed = [((a == MASK) & (b != MASK)) for a, b in zip(states, states[1:])]
    # m/(N - n) of the m left, rounded: 64/8, 56/7, ... = 8 every step
    assert [r.sum(1).tolist() for r in revealed] == [[8] * 50] * 8
    first = revealed[0]
    for b in range(50):  # one masked run at the first step: 8 of 64 fit easily at distance >= 3
        where = first[b].nonzero().flatten()
        assert (where[1:] - where[:-1]).min() >= 3


def test_orders_are_deterministic_by_seed_and_the_seed_matters():
    z = torch.full((4, 32), MASK)
    for order in ("random", "dispersed:2", "confidence"):
        runs = [ancestral_sample(uniform_denoiser, z, 4, MASK, generator=torch.Generator().manual_seed(seed),
                                 order=UnmaskingOrder.parse(order)) for seed in (7, 7, 8)]
        assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_every_step_is_one_call_and_nothing_is_left_for_noise_removal():
    for order in ("dispersed:3", "margin", "entropy"):
        stats = SamplerStats()
        out = ancestral_sample(uniform_denoiser, torch.full((6, 20), MASK), 8, MASK,
                               generator=torch.Generator().manual_seed(0), stats=stats,
                               order=UnmaskingOrder.parse(order))
        assert (out != MASK).all() and stats.row_nfe.tolist() == [8] * 6 and stats.noise_removal_calls == 0


def test_caching_still_skips_rows_a_step_leaves_unchanged():
    # 3 masked positions over 8 steps: k = round(m p) is 0 on several steps, and those steps cost no call
    z = torch.tensor([[1, MASK, 2, MASK, 3, MASK]])
    stats, states = SamplerStats(), [z]
    out = ancestral_sample(uniform_denoiser, z, 8, MASK, generator=torch.Generator().manual_seed(0), stats=stats,
                           order=UnmaskingOrder("dispersed", 1), on_step=lambda i, t, zi: states.append(zi.clone()))
    changed = [not torch.equal(a, b) for a, b in zip(states, states[1:])]
    assert (out != MASK).all() and sum(changed) == 3
    assert stats.row_nfe.item() == 1 + sum(changed[:-1]) < 8


def test_confidence_family_by_hand():
    # three masked positions; V = 3 probabilities chosen so that the three scores rank them differently
    probs = torch.tensor([[[0.50, 0.50, 0.00, 0.0],     # max .50, margin .00, entropy ln 2 = .693
                           [0.60, 0.20, 0.20, 0.0],     # max .60, margin .40, entropy .950
                           [0.55, 0.45, 0.00, 0.0]]])   # max .55, margin .10, entropy .688
    z = torch.full((1, 3), 3)
    pick = {name: reveal(UnmaskingOrder(name), z, lambda: probs, torch.tensor(0.34), False, 3, None)
            for name in ("confidence", "margin", "entropy")}  # k = round(3 · .34) = 1
    assert pick["confidence"].tolist() == [[False, True, False]]
    assert pick["margin"].tolist() == [[False, True, False]]
    assert pick["entropy"].tolist() == [[False, False, True]]
    assert confidence_score("margin", probs, 3)[0].tolist() == pytest.approx([0.0, 0.4, 0.1])
    entropy = confidence_score("entropy", probs, 3)[0]
    assert entropy.tolist() == pytest.approx([-0.6931, -0.9503, -0.6881], abs=1e-4)


def test_top_k_where_takes_only_allowed_positions():
    score = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    allowed = torch.tensor([[False, True, True, True]])
    assert top_k_where(score, allowed, torch.tensor([2])).tolist() == [[False, True, True, False]]
    assert top_k_where(score, allowed, torch.tensor([9])).tolist() == [[False, True, True, True]]


def test_a_confidence_order_reveals_the_surest_positions_first():
    sure = torch.tensor([0.9, 0.3, 0.8, 0.25])  # how peaked x_θ is at each of 4 positions

    def peaked(z):
        p = torch.stack([sure, (1 - sure) / (V - 1)], -1)[:, [0] + [1] * (V - 1)]
        lp = torch.cat([p.log(), torch.full((4, 1), NEG_INF)], -1)
        return lp.expand(z.shape[0], -1, -1).clone()

    states = [torch.full((2, 4), MASK)]
    ancestral_sample(peaked, states[0], 4, MASK, generator=torch.Generator().manual_seed(0),
                     order=UnmaskingOrder("confidence"), on_step=lambda i, t, zi: states.append(zi.clone()))
    firsts = [next(i for i, s in enumerate(states) if s[0, pos] != MASK) for pos in range(4)]
    assert firsts == [1, 3, 2, 4]  # one per step, surest first


def test_rgas_without_guidance_follows_the_plain_sampler_in_every_order():
    class Disc(torch.nn.Module):
        def forward(self, u, sigma):
            return torch.zeros(u.shape[:2])

    z = torch.full((3, 12), MASK)
    for order in ("dispersed:2", "entropy"):
        o = UnmaskingOrder.parse(order)
        plain = ancestral_sample(uniform_denoiser, z, 6, MASK, generator=torch.Generator().manual_seed(4), order=o)
        same = rgas_sample(uniform_denoiser, Disc(), z, 6, MASK, generator=torch.Generator().manual_seed(4),
                           settings=RGASSettings(rho=1.0, h_start=0.0, h_end=0.0, candidates=1), order=o)
        assert torch.equal(plain, same)


def test_a_dispersed_rollout_reveals_the_scheduled_count_and_scores_what_it_reveals():
    rows, length = 4, 16
    table = torch.randn(length, V + 1, generator=torch.Generator().manual_seed(0), requires_grad=True)

    def student(z):
        return subs_log_probs(table.expand(z.shape[0], -1, -1), z, MASK)

    gens = [torch.Generator().manual_seed(10 + i) for i in range(rows)]
    r = student_rollout(student, rollout_times(torch.full((rows,), 0.5), 4), length, MASK, LogLinearSchedule(),
                        gens, order=UnmaskingOrder("dispersed", 2))
    assert (r.x != MASK).all()  # the last step reveals every position left (no leftovers, unlike random)
    states = r.states + [r.x]
    revealed = [((a == MASK) & (b != MASK)) for a, b in zip(states, states[1:])]
    assert [int(x.sum(1)[0]) for x in revealed] == [4, 4, 4, 4] and all((x.sum(1) == 4).all() for x in revealed)
    lp = torch.log_softmax(table[:, :V], -1).detach()
    expected = sum((lp.expand(rows, -1, -1).gather(-1, r.x.clamp(max=V - 1)[..., None])[..., 0] * rev).sum(1)
                   for rev in revealed)
    assert torch.allclose(r.log_prob.detach(), expected, atol=1e-5)


@pytest.mark.parametrize("order", ["random", "dispersed:1", "dispersed:4"])
def test_every_masked_position_of_a_short_run_is_revealed_once(order):
    for steps, length in itertools.product((1, 2, 5), (1, 3, 9)):
        out = ancestral_sample(uniform_denoiser, torch.full((2, length), MASK), steps, MASK,
                               generator=torch.Generator().manual_seed(steps), order=UnmaskingOrder.parse(order))
        assert (out != MASK).all() and ((out >= 0) & (out < V)).all()
