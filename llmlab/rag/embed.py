"""The sentence encoder (Sentence-BERT, Reimers & Gurevych 2019) = all-MiniLM-L6-v2's modules:
BERT's tokenizer -> the encoder-only BERT of llmlab/model/encoder.py -> mean pooling over the real
tokens -> L2 normalisation. Embeddings equal sentence-transformers' within 1e-5 cosine (tested).

BERT's tokenizer: clean the text, put spaces around CJK characters, lowercase and strip accents,
split on punctuation, then WordPiece greedy longest-match (llmlab.tokenizer.wordpiece).
"""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import torch
import torch.nn.functional as F

from llmlab.model.encoder import load_bert, minilm_dir
from llmlab.tokenizer.wordpiece import WordPiece


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

    def embed(self, texts: list[str], max_length: int | None = None) -> torch.Tensor:
        """(n, dim) unit vectors of one padded batch, differentiable (fine-tuning: llmlab.rag.finetune)."""
        return self._embed_ids([self.tokenizer.encode(t, max_length or self.max_length) for t in texts])

    def _embed_ids(self, ids: list[list[int]]) -> torch.Tensor:
        T = max(len(x) for x in ids)
        batch = torch.full((len(ids), T), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros(len(ids), T, dtype=torch.long)
        for j, x in enumerate(ids):
            batch[j, :len(x)] = torch.tensor(x)
            mask[j, :len(x)] = 1
        h = self.model(batch, mask)
        m = mask[..., None].float()
        return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)  # mean over real tokens

    @torch.inference_mode()
    def encode(self, texts: list[str], progress=None) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.dim)
        ids = [self.tokenizer.encode(t, self.max_length) for t in texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch: less padding
        out = torch.empty(len(texts), self.dim)
        for s in range(0, len(order), self.batch_size):
            rows = order[s:s + self.batch_size]
            out[rows] = self._embed_ids([ids[i] for i in rows])
            if progress is not None:
                progress(len(rows))
        return out
