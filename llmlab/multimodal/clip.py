"""CLIP and SigLIP dual encoders: a ViT image tower and a causal byte-level text Transformer, each
projected (no bias) into a shared embedding space and L2-normalised (Radford et al. 2021; Zhai et al.
2023). Text is pooled at the end-of-text token (the highest id: argmax pooling, as CLIP). The loss
and its temperature/bias live in losses.py; `forward` returns what open_clip's CLIP returns,
(image_features, text_features, logit_scale.exp()[, logit_bias]), so the two train in one loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.errors import UserError
from llmlab.multimodal.losses import (CLIP_INIT_LOGIT_SCALE, CLIP_MAX_LOGIT_SCALE, SIGLIP_INIT_BIAS,
                                      SIGLIP_INIT_LOGIT_SCALE, clip_loss, siglip_loss)
from llmlab.multimodal.text import VOCAB_SIZE, encode_texts
from llmlab.multimodal.vit import Block, ViTConfig, VisionTransformer, _init


@dataclass
class TextConfig:
    context_length: int = 48
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0


@dataclass
class ClipConfig:
    vision: ViTConfig = field(default_factory=ViTConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 64
    loss: str = "clip"  # clip (softmax InfoNCE) | siglip (pairwise sigmoid)

    def validate(self) -> "ClipConfig":
        self.vision.validate()
        if self.loss not in ("clip", "siglip"):
            raise UserError(f"loss must be clip or siglip, got '{self.loss}'")
        if self.text.width % self.text.num_heads:
            raise UserError(f"text width {self.text.width} is not divisible by num_heads {self.text.num_heads}")
        return self


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(VOCAB_SIZE, cfg.width)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.context_length, cfg.width) * 0.01)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.ln_final = nn.LayerNorm(cfg.width, eps=1e-6)
        self.apply(_init)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, ids: torch.Tensor, pooled: bool = True) -> torch.Tensor:
        """(B, T) ids -> (B, width) end-of-text features, or (B, T, width) with pooled=False."""
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        for blk in self.blocks:
            x = blk(x, causal=True)
        x = self.ln_final(x)
        return x[torch.arange(len(ids)), ids.argmax(-1)] if pooled else x


class CLIP(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.config = cfg = cfg.validate()
        self.visual = VisionTransformer(cfg.vision)
        self.text = TextTransformer(cfg.text)
        self.visual_projection = nn.Linear(cfg.vision.embed_dim, cfg.embed_dim, bias=False)
        self.text_projection = nn.Linear(cfg.text.width, cfg.embed_dim, bias=False)
        nn.init.normal_(self.visual_projection.weight, std=cfg.vision.embed_dim ** -0.5)
        nn.init.normal_(self.text_projection.weight, std=cfg.text.width ** -0.5)
        siglip = cfg.loss == "siglip"
        self.logit_scale = nn.Parameter(torch.tensor(SIGLIP_INIT_LOGIT_SCALE if siglip else CLIP_INIT_LOGIT_SCALE))
        self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_INIT_BIAS)) if siglip else None
        clip_init(self)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        f = self.visual_projection(self.visual.pool(self.visual.forward_features(images)))
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        f = self.text_projection(self.text(ids))
        return F.normalize(f, dim=-1) if normalize else f

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return encode_texts(texts, self.config.text.context_length)

    def forward(self, images: torch.Tensor, ids: torch.Tensor):
        # CLIP clamps the temperature so the logits never exceed 100 (training stability)
        scale = self.logit_scale.clamp(max=CLIP_MAX_LOGIT_SCALE).exp()
        out = (self.encode_image(images), self.encode_text(ids), scale)
        return out + (self.logit_bias,) if self.logit_bias is not None else out

    def loss(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(self(images, ids))


def clip_init(model: CLIP) -> None:
    """CLIP's initialisation (Radford et al. 2021, as in open_clip): class token and positions
    ~ N(0, width^-1/2); text blocks attn ~ N(0, w^-1/2), output projections ~ N(0, w^-1/2 (2L)^-1/2),
    MLP input ~ N(0, (2w)^-1/2); vision attention input Xavier-uniform, other vision linears
    PyTorch's default; biases as open_clip draws them (`open_clip_bias_draw`). timm's N(0, 0.02) suits wide ViTs; at width 64 it leaves the blocks near
    the identity and training starts several times slower (docs/LOG.md). One deliberate difference
    from open_clip: the text position table starts as a rescaled sin-cos table (`text_positions`)."""
    vis, txt = model.visual, model.text
    w = vis.config.embed_dim
    with torch.no_grad():
        vis.cls_token.normal_(0, w ** -0.5)
        if isinstance(vis.pos_embed, nn.Parameter):
            vis.pos_embed.normal_(0, w ** -0.5)
    for blk in vis.blocks:
        nn.init.xavier_uniform_(blk.attn.qkv.weight)
        nn.init.zeros_(blk.attn.qkv.bias)
        for lin in (blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
            lin.reset_parameters()
    tw, layers = txt.config.width, txt.config.depth
    proj_std, attn_std, fc_std = tw ** -0.5 * (2 * layers) ** -0.5, tw ** -0.5, (2 * tw) ** -0.5
    for blk in txt.blocks:
        nn.init.normal_(blk.attn.qkv.weight, std=attn_std)
        nn.init.normal_(blk.attn.proj.weight, std=proj_std)
        nn.init.normal_(blk.mlp.fc1.weight, std=fc_std)
        nn.init.normal_(blk.mlp.fc2.weight, std=proj_std)
    open_clip_bias_draw(model)
    if TEXT_POSITION_STD is not None:  # None: open_clip's N(0, 0.01) draw stays (a validation arm's control)
        with torch.no_grad():  # replaced after every draw: the random stream is the validated arm's
            txt.positional_embedding.copy_(text_positions(*txt.positional_embedding.shape, std=TEXT_POSITION_STD))


TEXT_POSITION_STD: float | None = 0.02  # the token embedding's std


def sincos_1d(length: int, dim: int) -> torch.Tensor:
    """(length, dim) 1-D sin-cos positions (Vaswani et al. 2017, s3.5): sin(p w_i) in the first dim/2
    channels, cos(p w_i) in the rest, w_i = 10000^(-2i/dim)."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    return torch.cat([(pos * omega).sin(), (pos * omega).cos()], 1).float()


def text_positions(length: int, dim: int, std: float = 0.02) -> torch.Tensor:
    """Our text tower's initial (still learned) position table: the 1-D sin-cos table rescaled to
    overall std 0.02. open_clip draws N(0, 0.01), an independent vector per position; zero-shot
    prompts put the class word and the end-of-text token at positions no training caption uses, and
    a smooth table (a fixed offset is a linear map of sin/cos) carries over to them. Chosen on
    validation digits with 12 unseen prompts that are not the benchmark's (session 16: +0.050
    accuracy, s.e. 0.019, over 24 seeds, against N(0, 0.01); zeros +0.035, sin-cos at std 0.01 +0.026;
    `benchmarks/multimodal_init.py`, docs/LOG.md)."""
    t = sincos_1d(length, dim)
    return t / t.std() * std


def open_clip_bias_draw(model: CLIP) -> None:
    """The biases as open_clip draws them: text MLP biases (c_fc, c_proj) keep nn.Linear's default
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the image attention output bias is zero
    (nn.MultiheadAttention's reset). Drawn last, after every other tensor, in this order (text
    block 0 fc1, fc2, block 1 ...), exactly the draw session 14 chose on validation digits only
    (`benchmarks/multimodal_init.py`: +0.008, s.e. 0.009, over 32 seeds; docs/LOG.md). The vision
    attention output bias was drawn by reset_parameters above; zeroing it keeps the random stream."""
    with torch.no_grad():
        for blk in model.text.blocks:
            for lin in (blk.mlp.fc1, blk.mlp.fc2):
                bound = lin.in_features ** -0.5
                nn.init.uniform_(lin.bias, -bound, bound)
        for blk in model.visual.blocks:
            nn.init.zeros_(blk.attn.proj.bias)


def contrastive_loss(out: tuple, targets: torch.Tensor | None = None) -> torch.Tensor:
    """The loss for a (image, text, scale[, bias]) tuple from our CLIP or open_clip's; `targets`
    (N, N) as in `clip_loss` (None: pair i is the only positive of image i)."""
    return siglip_loss(*out, targets=targets) if len(out) == 4 else clip_loss(*out, targets=targets)
