"""Exponential moving average of a (possibly ZeRO-3-partitioned) model, updated shard by shard.

Under ZeRO-3 a parameter's live values are its local partition ``p.ds_tensor``; writing into ``p.data``
(an empty placeholder there) would silently update nothing. The EMA therefore keeps one fp32 shadow per
*local* partition and updates it from the partition, with no gather; for ZeRO 0–2 the local part is the
whole parameter. ZeRO-3 keeps small parameters gathered between steps (``ds_persist``): after swapping
partitions, those are re-gathered (a collective, as DeepSpeed does after loading a checkpoint). ``swapped_in`` exchanges shadows and live values so that evaluation and sampling run on the EMA.
"""
from __future__ import annotations

import contextlib

import torch


def _local(p: torch.nn.Parameter) -> torch.Tensor:
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


def _regather_persistent(params: list[torch.nn.Parameter]) -> None:
    """Refresh the full copies ZeRO-3 keeps of persistent parameters from their (swapped) partitions."""
    gathered = [p for p in params if getattr(p, "ds_persist", False) and p.ds_status.name == "AVAILABLE"]
    if gathered:
        gathered[0].partition(gathered)
        gathered[0].all_gather(gathered)


def ema_decay(beta: float, updates: int, warmup: bool) -> float:
    """β_k = min(β, (1 + k) / (10 + k)) with warm-up (k = updates so far), else β."""
    return min(beta, (1 + updates) / (10 + updates)) if warmup else beta


class EMA:
    def __init__(self, model: torch.nn.Module, beta: float, warmup: bool = True):
        self.params = list(model.parameters())
        self.beta, self.warmup, self.updates = beta, warmup, 0
        self.shadow = [_local(p).detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> float:
        decay = ema_decay(self.beta, self.updates, self.warmup)
        for s, p in zip(self.shadow, self.params):
            s.mul_(decay).add_(_local(p).float(), alpha=1 - decay)
        self.updates += 1
        return decay

    @contextlib.contextmanager
    def swapped_in(self):
        """Inside the block the model holds the EMA weights; the online weights come back afterwards."""
        with torch.no_grad():
            online = [_local(p).detach().clone() for p in self.params]
            for s, p in zip(self.shadow, self.params):
                _local(p).copy_(s)
            _regather_persistent(self.params)
        try:
            yield
        finally:
            with torch.no_grad():
                for o, p in zip(online, self.params):
                    _local(p).copy_(o)
                _regather_persistent(self.params)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow) or any(
                a.shape != b.shape for a, b in zip(state["shadow"], self.shadow)):
            raise ValueError("EMA state does not match this model's (partitioned) parameters")
        self.updates = state["updates"]
        self.shadow = [s.clone() for s in state["shadow"]]
