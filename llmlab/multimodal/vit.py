"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

An image (B, C, H, W) is cut into P x P patches, each linearly embedded (a stride-P convolution),
a learned [CLS] token is prepended, positions are added (learned, or fixed 2-D sin-cos as in MAE:
half the channels encode the row, half the column, each as sin/cos of pos / 10000^(2i/d)), and
pre-norm Transformer blocks x + Attn(LN(x)), x + MLP(LN(x)) follow; the final LN's [CLS] output
(or the mean of the patch tokens) feeds the head. Module and parameter names follow timm's
`VisionTransformer`, so its state dicts load strictly in both directions (tests/test_multimodal_vit.py
checks logits against timm on the same random weights).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.errors import UserError


@dataclass
class ViTConfig:
    image_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 0  # 0: no head (features only)
    pos: str = "learned"  # learned | sincos
    pool: str = "cls"  # cls | mean
    # CLIP's ViT (timm `pre_norm=True`, open_clip's `ln_pre`): a LayerNorm before the blocks and no
    # bias in the patch embedding
    pre_norm: bool = False

    def validate(self) -> "ViTConfig":
        if self.image_size % self.patch_size:
            raise UserError(f"vision image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise UserError(f"vision embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.pos not in ("learned", "sincos"):
            raise UserError(f"vision pos must be learned or sincos, got '{self.pos}'")
        if self.pool not in ("cls", "mean"):
            raise UserError(f"vision pool must be cls or mean, got '{self.pool}'")
        return self

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def sincos_2d(grid: int, dim: int, cls_token: bool = True) -> torch.Tensor:
    """(1, [1 +] grid*grid, dim) fixed 2-D sin-cos positions (MAE's get_2d_sincos_pos_embed):
    the first dim/2 channels encode the column (x), the rest the row (y); the [CLS] row is zero."""
    if dim % 4:
        raise UserError(f"2-D sin-cos positions need embed_dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")

    def axis(pos):
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)
    table = torch.cat([axis(xs), axis(ys)], dim=1).float()
    if cls_token:
        table = torch.cat([torch.zeros(1, dim), table])
    return table.unsqueeze(0)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm Transformer block (LayerNorm eps 1e-6 as timm)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask, causal)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size, bias=not cfg.pre_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), patches in row-major order


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg = cfg.validate()
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        n = cfg.grid * cfg.grid + 1
        if cfg.pos == "learned":
            self.pos_embed = nn.Parameter(torch.randn(1, n, D) * 0.02)
        else:
            self.register_buffer("pos_embed", sincos_2d(cfg.grid, D), persistent=False)
        self.norm_pre = nn.LayerNorm(D, eps=1e-6) if cfg.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.apply(_init)
        nn.init.normal_(self.cls_token, std=1e-6)

    def check_images(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_chans or x.shape[2] != cfg.image_size or x.shape[3] != cfg.image_size:
            raise UserError(f"images of shape {tuple(x.shape)} do not fit this vision encoder: it takes "
                            f"(B, {cfg.in_chans}, {cfg.image_size}, {cfg.image_size})")

    def forward_features(self, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1 + N, D): the final-LN outputs of [CLS] and every patch (layer -1 or
        depth), or the hidden states at `layer` as HF's `hidden_states[layer]` counts them, without
        the final LN (0: the embeddings; -2: the penultimate block's output, LLaVA-1.5's
        `vision_feature_layer`)."""
        self.check_images(x)
        depth = len(self.blocks)
        if not -depth - 1 <= layer <= depth:
            raise UserError(f"vision feature layer {layer} is outside -{depth + 1}..{depth} for a {depth}-block encoder")
        stop = depth if layer == -1 else layer % (depth + 1)
        x = self.patch_embed(x)
        x = self.norm_pre(torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed)
        for blk in self.blocks[:stop]:
            x = blk(x)
        return self.norm(x) if layer == -1 or stop == depth else x

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        return feats[:, 0] if self.config.pool == "cls" else feats[:, 1:].mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.forward_features(x)))


def _init(m: nn.Module) -> None:
    """timm's default ViT init: truncated-normal(0.02) linears, zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
