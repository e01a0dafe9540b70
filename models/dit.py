"""The MDLM DiT backbone: a non-causal transformer with rotary attention and adaLN-Zero blocks conditioned on σ.

``causal=True`` makes the same backbone an autoregressive LM (position i attends to positions ≤ i): the
in-domain judge that scores samples (``models/autoregressive.py``), trained by the same pre-training stage.

Layout and names follow MDLM's ``models/dit.py`` (fused qkv as [Q; K; V], half-split rotary on q and k,
no-bias LayerNorms, MLP ratio 4 with GELU-tanh, zero-initialised adaLN modulations and output projection,
untied embeddings, output width V + 1). Linear layers come from a layer factory (``models.layers``).

``latent_dim`` > 0 (our extension, spec §11: the latent-conditioned student) adds a per-sequence input ξ through a
zero-initialised projection W_ξ, either into the embedding of every [MASK] position, h_i = E[MASK] + W_ξ ξ
(``latent_input="mask"``: noise in the mask input; revealed tokens keep theirs), with a ξ_i of its own for each
position, h_i = E[MASK] + W_ξ ξ_i (``"positions"``: random token initialisations, as DiMO), or into the
conditioning vector, c = SiLU(σ-embedding + W_ξ ξ) (``"condition"``; a teacher trained at σ = 0 all but ignores c,
measured in docs/distillation.md). With W_ξ = 0 the model is exactly the one without it, so a student made from its
teacher starts as the teacher.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.layers import DenseLayers

SIGMA_FREQUENCIES = 256


class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias, computed in fp32."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), (x.shape[-1],)).type_as(x) * self.weight.type_as(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def sinusoidal_embedding(sigma: torch.Tensor, dim: int = SIGMA_FREQUENCIES, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) -> (B, dim): [cos(σ f_k), sin(σ f_k)] with f_k = max_period^(-k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
    args = sigma.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class SigmaEmbedder(nn.Module):
    """σ -> conditioning vector: sinusoidal features, Linear, SiLU, Linear (both with bias)."""

    def __init__(self, cond_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(SIGMA_FREQUENCIES, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(sigma))


def rotary_cos_sin(seq_len: int, head_dim: int, device: torch.device, base: float = 10000.0):
    """(L, head_dim) cos and sin tables of the half-split rotary embedding."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, L, Dh) by position: x cos + rotate_half(x) sin, rotate_half(x) = [-x2, x1]."""
    x1, x2 = x.chunk(2, dim=-1)
    return (x.float() * cos + torch.cat([-x2, x1], dim=-1).float() * sin).type_as(x)


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, cond_dim: int, mlp_ratio: int, dropout: float, layers: DenseLayers,
                 causal: bool = False):
        super().__init__()
        self.heads, self.causal = layers.local_heads(heads), causal
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = layers.linear(dim, 3 * dim, bias=False, role="qkv")
        self.attn_out = layers.linear(dim, dim, bias=False, role="row")
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(layers.linear(dim, mlp_ratio * dim, bias=True, role="column"),
                                 nn.GELU(approximate="tanh"),
                                 layers.linear(mlp_ratio * dim, dim, bias=True, role="row"))
        self.adaLN_modulation = layers.linear(cond_dim, 6 * dim, bias=True, role="replicated", zero_init=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        b, length, _ = x.shape
        qkv = self.attn_qkv(modulate(self.norm1(x), shift_msa, scale_msa))
        q, k, v = qkv.view(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # each (B, H, L, Dh)
        attn = F.scaled_dot_product_attention(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v,
                                              is_causal=self.causal)
        attn = attn.transpose(1, 2).reshape(b, length, -1)
        x = x + gate_msa * self.dropout(self.attn_out(attn))
        return x + gate_mlp * self.dropout(self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


def run_block(block: DiTBlock, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, c: torch.Tensor,
              checkpointing: bool) -> torch.Tensor:
    """One block; with ``checkpointing`` (and grad on) its activations are recomputed in the backward instead of
    kept. The recomputation replays the default generator's state, so dropout draws the same masks; nothing
    random runs inside a tensor-parallel split region (``models.tensor_parallel``), so no other state is needed."""
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(block, h, cos, sin, c, use_reentrant=False, preserve_rng_state=True)
    return block(h, cos, sin, c)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, num_outputs: int, cond_dim: int, layers: DenseLayers):
        super().__init__()
        self.norm_final = LayerNorm(dim)
        self.linear = layers.vocab_projection(dim, num_outputs)
        self.adaLN_modulation = layers.linear(cond_dim, 2 * dim, bias=True, role="replicated", zero_init=True)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(modulate(self.norm_final(x), shift, scale))


LATENT_INPUTS = ("condition", "mask", "positions")


def latent_width(latent_input: str, hidden_size: int, cond_dim: int) -> int:
    """The output width of W_ξ: the token embeddings' for ``mask`` and ``positions``, the conditioning vector's for
    ``condition``."""
    if latent_input not in LATENT_INPUTS:
        raise ValueError(f"latent_input {latent_input!r}: one of {', '.join(LATENT_INPUTS)}")
    return cond_dim if latent_input == "condition" else hidden_size


def latent_shape(latent_input: str, latent_dim: int, seq_len: int) -> tuple[int, ...]:
    """One row's ξ: (d,), or (L, d) for ``positions`` (a ξ_i for each position)."""
    return (seq_len, latent_dim) if latent_input == "positions" else (latent_dim,)


class DiT(nn.Module):
    """``forward(x, sigma, latent)``: x is (B, L) token ids or (B, L, W) float logits; sigma (B,); latent (B,
    ``latent_shape``) or None (ξ = 0, the centre of its prior); returns (B, L, V + 1) (under tensor parallelism, this
    rank's ``vocab_shard`` of the columns)."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, cond_dim: int = 128,
                 mlp_ratio: int = 4, dropout: float = 0.1, layers: DenseLayers | None = None, causal: bool = False,
                 checkpointing: bool = False, latent_dim: int = 0, latent_input: str = "condition"):
        super().__init__()
        if hidden_size % num_heads or (hidden_size // num_heads) % 2:
            raise ValueError(f"hidden_size {hidden_size} must split into {num_heads} heads of even size")
        layers = layers or DenseLayers()
        self.vocab_size, self.num_heads, self.causal = vocab_size, num_heads, causal
        self.checkpointing = checkpointing  # activation checkpointing per block (memory for recomputation)
        self.vocab_shard = layers.vocab_shard(vocab_size + 1)  # this rank's output columns (None: all)
        self.vocab_embed = layers.embedding(vocab_size + 1, hidden_size)
        self.sigma_map = SigmaEmbedder(cond_dim)
        width = latent_width(latent_input, hidden_size, cond_dim)
        self.latent_dim, self.latent_input = latent_dim, latent_input
        if latent_dim:
            self.latent_map = layers.linear(latent_dim, width, bias=False, role="replicated", zero_init=True)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, cond_dim, mlp_ratio, dropout, layers, causal)
                                    for _ in range(num_layers))
        self.output_layer = FinalLayer(hidden_size, vocab_size + 1, cond_dim, layers)

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, latent: torch.Tensor | None = None) -> torch.Tensor:
        h = self.vocab_embed(x)
        c = self.sigma_map(sigma)
        if latent is not None:
            shape = (x.shape[0], *latent_shape(self.latent_input, self.latent_dim, x.shape[1]))
            if not self.latent_dim or latent.shape != shape:
                raise ValueError(f"latent of shape {tuple(latent.shape)}: this DiT takes "
                                 + (f"{shape} ({self.latent_input}, latent_dim {self.latent_dim})" if self.latent_dim
                                    else "none: it has no latent input"))
            shift = self.latent_map(latent.to(c.dtype))
            if self.latent_input != "condition":
                if x.dim() != 2:
                    raise ValueError("a latent at the [MASK] embeddings needs token ids, not soft inputs")
                shift = shift if self.latent_input == "positions" else shift[:, None, :]
                h = h + (x == self.mask_id)[..., None].to(h.dtype) * shift.to(h.dtype)
            else:
                c = c + shift
        c = F.silu(c)
        cos, sin = rotary_cos_sin(h.shape[1], h.shape[2] // self.num_heads, h.device)
        for block in self.blocks:
            h = run_block(block, h, cos, sin, c, self.checkpointing)
        return self.output_layer(h, c)
