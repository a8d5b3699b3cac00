"""Byte-level text for the small text towers (CLIP/SigLIP/BLIP): UTF-8 bytes 1..255 are tokens,
0 pads, 256 ends the text. The end token has the highest id, so "pool at argmax(id)" (CLIP's EOT
pooling, as open_clip does) finds it; any text is encodable, with no vocabulary to build."""
from __future__ import annotations

import torch

PAD_ID, EOT_ID, VOCAB_SIZE = 0, 256, 257


def encode_texts(texts: list[str], context_length: int) -> torch.Tensor:
    """(len(texts), context_length) ids: bytes, EOT, zero padding; over-long texts are cut so the
    EOT always fits."""
    out = torch.full((len(texts), context_length), PAD_ID, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [b for b in t.encode("utf-8") if b][: context_length - 1] + [EOT_ID]
        out[i, : len(ids)] = torch.tensor(ids)
    return out
