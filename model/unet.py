"""The paper's U-Net (Ho et al. 2020, appendix B), every size configurable.

Levels of ``num_res_blocks`` ResBlocks at widths ``base_channels * channel_mult[i]``, halving the
resolution between levels; self-attention after each ResBlock at ``attention_resolutions``; a
middle of ResBlock, attention, ResBlock; and a mirrored up path of ``num_res_blocks + 1`` blocks
per level that concatenates the skips. The timestep enters every ResBlock through a sinusoidal
embedding and a two-layer MLP; a class label, when the model is conditional, adds an embedding
to it. The network never sees betas: it takes (x_t, t[, label]) and returns the raw output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig
from .layers import AttentionBlock, Downsample, ResBlock, Upsample, timestep_embedding, zero_


class Level(nn.Module):
    """One resolution of the down or the up path."""

    blocks: nn.ModuleList
    attns: nn.ModuleList
    resample: nn.Module | None

    def __init__(self, blocks: list[ResBlock], attns: list[AttentionBlock], resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)  # empty, or one per block
        self.resample = resample


class UNet(nn.Module):
    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        temb = c.time_embed_dim
        widths = c.widths

        def block(in_ch: int, out_ch: int) -> ResBlock:
            return ResBlock(in_ch, out_ch, temb, groups=c.norm_groups, eps=c.norm_eps, dropout=c.dropout)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, head_dim=c.attention_head_dim, groups=c.norm_groups, eps=c.norm_eps)

        self.time_embed = nn.Sequential(nn.Linear(c.base_channels, temb), nn.SiLU(), nn.Linear(temb, temb))
        # Index num_classes is the null label: "no class", for classifier-free guidance.
        self.class_embed = nn.Embedding(c.num_classes + 1, temb) if c.num_classes else None
        self.conv_in = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)

        skips = [c.base_channels]
        ch = c.base_channels
        self.down = nn.ModuleList()
        for i, (width, res) in enumerate(zip(widths, c.resolutions, strict=True)):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(block(ch, width))
                ch = width
                if res in c.attention_resolutions:
                    attns.append(attn(ch))
                skips.append(ch)
            last = i == len(widths) - 1
            self.down.append(Level(blocks, attns, None if last else Downsample(ch, c.downsample_padding)))
            if not last:
                skips.append(ch)

        self.mid_block1 = block(ch, ch)
        self.mid_attn = attn(ch)
        self.mid_block2 = block(ch, ch)

        self.up = nn.ModuleList()
        for i in reversed(range(len(widths))):
            width, res = widths[i], c.resolutions[i]
            blocks, attns = [], []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(block(ch + skips.pop(), width))
                ch = width
                if res in c.attention_resolutions:
                    attns.append(attn(ch))
            self.up.append(Level(blocks, attns, Upsample(ch) if i > 0 else None))

        self.norm_out = nn.GroupNorm(c.norm_groups, ch, eps=c.norm_eps)
        self.conv_out = zero_(nn.Conv2d(ch, c.out_channels, 3, padding=1))

    @property
    def conditional(self) -> bool:
        return self.class_embed is not None

    @property
    def null_label(self) -> int | None:
        """The label that means "no class" (classifier-free guidance's unconditional branch);
        None for an unconditional network, which takes no labels at all."""
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) noisy images; t: (B,) integer timesteps in [0, T); labels: (B,) class
        indices, ``null_label`` for none (None means all null). Returns the raw output (B, C_out, H, W)."""
        c = self.config
        emb = timestep_embedding(
            t, c.base_channels, flip_sin_to_cos=c.time_flip_sin_to_cos, freq_shift=c.time_freq_shift
        ).to(self.conv_in.weight.dtype)
        emb = self.time_embed(emb)
        if self.class_embed is not None:
            if labels is None:
                labels = torch.full_like(t, self.config.num_classes or 0)
            emb = emb + self.class_embed(labels)
        elif labels is not None:
            raise ValueError("labels were given to an unconditional network")
        emb = F.silu(emb)  # every ResBlock applies SiLU before its projection: do it once

        h = self.conv_in(x)
        hs = [h]
        for level in self.down:
            assert isinstance(level, Level)
            for j, blk in enumerate(level.blocks):
                h = blk(h, emb)
                if level.attns:
                    h = level.attns[j](h)
                hs.append(h)
            if level.resample is not None:
                h = level.resample(h)
                hs.append(h)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)), emb)

        for level in self.up:
            assert isinstance(level, Level)
            for j, blk in enumerate(level.blocks):
                h = blk(torch.cat([h, hs.pop()], dim=1), emb)
                if level.attns:
                    h = level.attns[j](h)
            if level.resample is not None:
                h = level.resample(h)

        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
