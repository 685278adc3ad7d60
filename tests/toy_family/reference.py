"""PyTorch side of the test family: a plain ``nn.Module``, no reference library."""

from __future__ import annotations

import torch
from torch import nn

from vit_porting.families.base import VariantSpec


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.attn_drop = nn.Identity()  # the map passes through it: the tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop((q * self.head_dim**-0.5 @ k.transpose(-2, -1)).softmax(-1))
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=eps), Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, int(dim * mlp_ratio)))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ToyViT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.patch_embed = nn.Conv2d(c.in_channels, c.embed_dim, c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, c.embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, c.num_patches + 1, c.embed_dim) * 0.02)
        self.blocks = nn.ModuleList(Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.layer_norm_eps)
                                    for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.layer_norm_eps)
        self.head = nn.Linear(c.embed_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def build_reference(spec: VariantSpec) -> torch.nn.Module:
    return ToyViT(spec.config).eval()


def reference_taps(model: torch.nn.Module, intermediates: bool = False) -> dict[str, torch.nn.Module]:
    taps = {f"blocks_{i}_attn": block.attn.attn_drop for i, block in enumerate(model.blocks)}
    if intermediates:
        taps.update({f"blocks_{i}_out": block for i, block in enumerate(model.blocks)})
    return taps


def call_reference(model: torch.nn.Module, images_nchw: torch.Tensor) -> torch.Tensor:
    return model(images_nchw)


def write_hub_config(model: torch.nn.Module, spec: VariantSpec, folder: str, labels: dict | None) -> None:
    return None  # no reference library, so no loader of its own
