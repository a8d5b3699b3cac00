"""Special tokens an objective adds (sentinels, mode tokens, [MASK], FIM markers): ids, and the
tokenizer files that carry them.

They go *after* the data's vocabulary, so every ordinary token keeps its id: the model's
vocab_size grows by their number (new embedding rows), `ModelConfig.extra["special_tokens"]`
records name -> id in config.json, and the tokenizer.json copied into the saved model lists them
as added special tokens (so `tok.encode("<extra_id_0>")` is one id and is never split). Sentinels
take the top ids in reverse, as T5's: <extra_id_k> = vocab_size - 1 - k.
"""
from __future__ import annotations

import json

from llmlab.errors import UserError


def allot(base_vocab: int, names: list[str]) -> dict[str, int]:
    """name -> id for `names` appended after a vocabulary of base_vocab ids (sentinels last, reversed)."""
    others = [n for n in names if not n.startswith("<extra_id_")]
    sentinels = [n for n in names if n.startswith("<extra_id_")]
    ids = {n: base_vocab + i for i, n in enumerate(others)}
    top = base_vocab + len(names) - 1
    ids.update({f"<extra_id_{k}>": top - k for k in range(len(sentinels))})
    return ids


def find(names: list[str], model_config, tokenizer=None, objective: str = "") -> dict[str, int]:
    """The ids of `names` in an existing model (config.json's record, else its tokenizer); a
    one-line UserError naming the first missing one."""
    known = dict(getattr(model_config, "extra", {}).get("special_tokens", {}))
    if tokenizer is not None:
        known.update({n: i for n, i in tokenizer.special.items() if n not in known})
    missing = [n for n in names if n not in known]
    if missing:
        kind = "sentinel tokens" if missing[0].startswith("<extra_id_") else "special tokens"
        raise UserError(f"objective={objective} needs {kind} ({missing[0]}"
                        f"{' ...' if len(missing) > 1 else ''}) that this model's vocabulary lacks; "
                        "train it from scratch with this objective (the tokens are added) or pick another objective")
    vocab = getattr(model_config, "vocab_size", None)
    if vocab is not None and any(known[n] >= vocab for n in names):
        raise UserError(f"objective={objective}: a special token id is outside the model's vocab_size {vocab}")
    return {n: known[n] for n in names}


def add_to_tokenizer_files(files: dict[str, str], ids: dict[str, int]) -> dict[str, str]:
    """tokenizer.json / tokenizer_config.json texts with `ids` added as special tokens."""
    out = dict(files)
    if "tokenizer.json" in out:
        tj = json.loads(out["tokenizer.json"])
        have = {t["content"] for t in tj.get("added_tokens", [])}
        tj.setdefault("added_tokens", []).extend(
            {"id": i, "content": n, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for n, i in sorted(ids.items(), key=lambda x: x[1]) if n not in have)
        out["tokenizer.json"] = json.dumps(tj, ensure_ascii=False)
    if "tokenizer_config.json" in out:
        tc = json.loads(out["tokenizer_config.json"])
        dec = tc.setdefault("added_tokens_decoder", {})
        for n, i in ids.items():
            dec[str(i)] = {"content": n, "special": True}
        out["tokenizer_config.json"] = json.dumps(tc, ensure_ascii=False, indent=2)
    return out
