import torch

from pipeline.runtime.randomness import LATENT_MATCH, Purpose, keyed_generator, keyed_seed, rank_rows


def test_keys_pick_distinct_streams_and_repeat_exactly():
    seeds = {keyed_seed(7, p, step, row) for p in Purpose for step in range(4) for row in range(4)}
    assert len(seeds) == len(Purpose) * 16
    a = torch.rand(5, generator=keyed_generator(7, LATENT_MATCH, 3, 1))
    assert torch.equal(a, torch.rand(5, generator=keyed_generator(7, LATENT_MATCH, 3, 1)))


def test_trailing_zero_keys_collide_which_is_why_one_purpose_keeps_one_length():
    """The rule in keyed_seed's docstring: a key tuple and itself with zeros appended give one seed."""
    assert keyed_seed(7, 5, 3) == keyed_seed(7, 5, 3, 0)
    assert keyed_seed(7, 5, 3) != keyed_seed(7, 5, 0, 3)
    # the mixture match's two kinds of draw, (step, row) and (step, draw, 1), never meet
    assert not ({keyed_seed(7, LATENT_MATCH, s, r) for s in range(3) for r in range(8)}
                & {keyed_seed(7, LATENT_MATCH, s, j, 1) for s in range(3) for j in range(8)})


def test_rank_rows_split_the_global_draw():
    draw = torch.arange(6)
    assert torch.equal(torch.cat([rank_rows(draw, r, 2) for r in range(3)]), draw)
