"""The exact denoiser of a synthetic corpus: the chain's posterior of each position given a row's unmasked ones.

A prepared row is [BOS] + L − 2 letters + [EOS] (``data_prep.wrapping``), the letters a window of the stationary
chain. Given the unmasked positions, the posterior of every masked letter is exact by forward–backward over the
window's hidden (regime, letter) states (a first-order chain has one regime), a masked position allowing every
letter and the posterior summed over regimes; a token inside the window that is not a letter (an [EOS] between
records) breaks the chain, and the next letter starts afresh from the stationary distribution. (The corpus's
records have a fixed length, so where a record boundary may fall is not quite memoryless; rows holding one are
about one in 30 at 2,000 letters per record and L = 64.)

Driving the plain sampler with it gives what a perfect denoiser achieves at N steps: the teacher's gap to it is
model error, its own gap to many steps is what N-step sampling from the exact marginals costs (positions
unmasked in one step are drawn independently). ``exact_bundle`` makes it a drop-in for a bundle's model.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from models.diffusion import NEG_INF
from pipeline.bundle import Bundle
from pipeline.measure.exact_judge import ExactJudge


class ChainPosterior(nn.Module):
    """The posterior of ``judge``'s chain (its letters are the judge's tokens). ``forward(z, sigma)`` → (B, L, V + 1) log-probabilities of each position given z's unmasked positions (a
    model's logits: SUBS keeps unmasked positions and the [MASK] column out)."""

    def __init__(self, judge: ExactJudge, vocab_size: int):
        super().__init__()
        tok = judge.tok
        letters = sorted(judge.state.items(), key=lambda item: item[1])  # the judge's token id -> chain state
        self.register_buffer("letter_ids", torch.tensor([token for token, _ in letters]))
        state = torch.full((vocab_size + 1,), -1, dtype=torch.long)
        state[self.letter_ids] = torch.arange(len(letters))
        self.register_buffer("state", state)  # token id -> chain state, -1 for a non-letter
        initial, transition = judge.hidden.state_chain()  # over states r K + x
        self.register_buffer("transition", torch.tensor(transition, dtype=torch.float64))
        self.register_buffer("stationary", torch.tensor(initial, dtype=torch.float64))
        self.regimes = judge.hidden.regimes
        self.mask_id, self.bos_id, self.eos_id = vocab_size, tok.bos_id, tok.eos_id

    def forward(self, z: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        rows, length = z.shape
        window = z[:, 1:-1]
        states = self.state[window]
        masked, letter = window == self.mask_id, states >= 0
        k = len(self.letter_ids)
        # evidence: any letter where masked, the observed letter where one is, in every regime; a non-letter token
        # breaks the chain
        evidence = masked[..., None].double().expand(-1, -1, k).clone()
        evidence[letter] = nn.functional.one_hot(states[letter], k).double()
        evidence = evidence.repeat(1, 1, self.regimes)  # state r K + x holds letter x
        link = (masked | letter)[:, 1:] & (masked | letter)[:, :-1]  # position i + 1 continues position i's run
        forward = torch.empty_like(evidence)
        backward = torch.ones_like(evidence)
        forward[:, 0] = _normalised(self.stationary * evidence[:, 0])
        for i in range(1, window.shape[1]):
            carried = torch.where(link[:, i - 1, None], forward[:, i - 1] @ self.transition, self.stationary)
            forward[:, i] = _normalised(carried * evidence[:, i])
        for i in range(window.shape[1] - 2, -1, -1):
            carried = (evidence[:, i + 1] * backward[:, i + 1]) @ self.transition.T
            backward[:, i] = torch.where(link[:, i, None], _normalised(carried), backward[:, i])
        posterior = _normalised(forward * backward).unflatten(-1, (self.regimes, k)).sum(-2)
        out = torch.full((rows, length, self.mask_id + 1), NEG_INF, dtype=torch.float32, device=z.device)
        out[:, 1:-1, self.letter_ids] = posterior.clamp(min=1e-30).log().float()
        out[:, 0, self.bos_id] = 0.0
        out[:, -1, self.eos_id] = 0.0
        return out


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum(-1, keepdim=True).clamp(min=1e-300)


def exact_bundle(bundle: Bundle, judge: ExactJudge) -> Bundle:
    """``bundle`` with its model replaced by the judge's chain's exact posterior (same tokenizer, length, [MASK])."""
    return dataclasses.replace(bundle, model=ChainPosterior(judge, bundle.mask_id), discriminator=None,
                               online=None)
