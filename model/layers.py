"""The U-Net's building blocks (Ho et al. 2020, appendix B; the layout of the paper's code).

Each block is written for inference speed as well as training: SiLU runs in place on fresh
tensors, attention is one fused q/k/v projection and ``scaled_dot_product_attention``, and
nothing depends on the memory format, so the network runs channels_last as well as contiguous.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(
    t: torch.Tensor, dim: int, *, flip_sin_to_cos: bool = False, freq_shift: float = 1.0, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, as in the Transformer (paper, appendix B).

    Frequencies are max_period^(-i / (dim/2 - freq_shift)); freq_shift = 1 is the paper's code.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters: residual branches then start as the identity, as in the paper's code."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; add the projected time embedding; GroupNorm, SiLU, dropout, conv;
    plus a 1x1-conv shortcut when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, *, groups: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        """``temb_act`` is SiLU(time embedding), computed once per forward by the caller."""
        h = F.silu(self.norm1(x), inplace=True)
        h = self.conv1(h)
        h = h + self.time_proj(temb_act)[:, :, None, None]
        h = F.silu(self.norm2(h), inplace=True)
        h = self.conv2(self.dropout(h))
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + h


class AttentionBlock(nn.Module):
    """Self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int, *, head_dim: int | None, groups: int, eps: float) -> None:
        super().__init__()
        self.heads = 1 if head_dim is None else channels // head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(tokens).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d); scale 1/sqrt(d)
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution. padding=0 pads right and bottom by one first (TensorFlow "SAME",
    the paper's code and the published weights); padding=1 pads symmetrically."""

    def __init__(self, channels: int, padding: int) -> None:
        super().__init__()
        self.asymmetric = padding == 0
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.asymmetric:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
