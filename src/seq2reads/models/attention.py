"""Transformer pieces shared by the models: rotary position embeddings, the pre-norm block, and
the CNN's patch attention.

Written here rather than imported: torch has no public RoPE op, and the blocks are a few lines on
top of ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels on GPU).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def rope_angles(n_tokens: int, dim: int, base: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``(T, dim)`` of rotary embeddings (Su et al. 2021, "rotate half" layout)."""
    inv = 1.0 / base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    ang = torch.arange(n_tokens, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate query/key vectors ``(..., T, dim)`` by their position (pairs ``i``, ``i + dim/2``)."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rot.float() * sin).to(x.dtype)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``; ``(N, T, D)``."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        hidden = max(1, int(round(mlp_ratio * d_model)))
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(n, t, d)))
        return x + self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x))))))


class PatchAttention(nn.Module):
    """Self-attention over patches of a base-resolution feature track, added back residually.

    ``h (N, F, L)`` is cut into ``T = ceil(L / patch)`` tokens (zero-padded on the right), each a
    linear map of its ``patch * F`` values to ``F``; ``layers`` pre-norm :class:`Block` s with RoPE
    run over the tokens; a linear map back to ``patch * F`` values per token is un-patched, cropped
    to ``L`` and added to ``h``. The output map starts at zero, so a fresh module is the identity
    and training starts from the plain CNN.

    Why (the CNN's ``model.attention_layers``): a TSS is fixed by a TATA box and an initiator, but
    chance TATA/initiator-like matches in the window compete with the real ones; telling them
    apart takes the context of the whole window (where the divergent partner and the TF sites
    sit), which attention over 8-bp tokens gives at little cost. Measured in
    :mod:`seq2reads.models.bpnet`'s docstring.

    Parameters
    ----------
    channels : int
        F, the feature channels (must split into ``heads`` heads of even width, for RoPE).
    layers, heads, patch : int
        Transformer blocks, attention heads, positions per token.
    mlp_ratio : float
        Width of each block's MLP as a multiple of ``channels``.
    """

    def __init__(self, channels: int, layers: int = 1, heads: int = 4, patch: int = 8, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if channels % heads or (channels // heads) % 2:
            raise ValueError(f"{channels} channels do not split into {heads} heads of even width (RoPE)")
        self.channels, self.heads, self.patch = int(channels), int(heads), int(patch)
        self.patch_in = nn.Linear(patch * channels, channels)
        self.blocks = nn.ModuleList(Block(channels, heads, mlp_ratio, 0.0) for _ in range(layers))
        self.patch_out = nn.Linear(channels, patch * channels)
        nn.init.zeros_(self.patch_out.weight)
        nn.init.zeros_(self.patch_out.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h (N, F, L)`` -> ``h + attention update``, same shape."""
        n, f, length = h.shape
        p = self.patch
        t = -(-length // p)
        x = F.pad(h, (0, t * p - length)).view(n, f, t, p).permute(0, 2, 1, 3).reshape(n, t, f * p)
        x = self.patch_in(x)
        cos, sin = rope_angles(t, f // self.heads, device=x.device)
        for block in self.blocks:
            x = block(x, cos, sin)
        up = self.patch_out(x).view(n, t, f, p).permute(0, 2, 1, 3).reshape(n, f, t * p)
        return h + up[..., :length]


def uses_attention(model: nn.Module) -> bool:
    """Whether ``model`` attends (the encoder, or a CNN with ``attention_layers``): attention and
    LayerNorm have no DeepLIFT rule, and tangermeme's fast ISM assumes convolutions only."""
    return hasattr(model, "encode") or getattr(model, "attention", None) is not None
