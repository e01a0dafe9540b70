"""Named model sizes: the paper's DiT sizes and small CPU sizes for tests and the quickstart."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSize:
    hidden_size: int
    num_layers: int
    num_heads: int
    cond_dim: int = 128


SIZES: dict[str, ModelSize] = {
    "unit": ModelSize(hidden_size=32, num_layers=2, num_heads=2, cond_dim=16),  # unit tests, milliseconds
    "tiny": ModelSize(hidden_size=128, num_layers=4, num_heads=4, cond_dim=64),  # the CPU quickstart
    "small": ModelSize(hidden_size=768, num_layers=12, num_heads=12),  # 169.6M at V = 50257
    "medium": ModelSize(hidden_size=1024, num_layers=24, num_heads=16),  # 424.5M
    "large": ModelSize(hidden_size=1280, num_layers=36, num_heads=20),  # 872.9M
}
