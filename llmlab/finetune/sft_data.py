"""SFT data: instruction records -> ids + assistant-only labels -> rows -> seeded, resumable batches.

- Records come from the builders of `datasets.py` (train split only; the held-out split, made by
  the same question hash as `llmlab sft data`, is kept for evaluation) and/or TRL-style JSONL
  files (`jsonl.read_jsonl`: a malformed line is `file:line`, stopped or skipped by option).
- Each conversation is rendered by the one chat renderer (`tokenizer.chat.encode_chat`), which
  gives a mask that is 1 on assistant replies only (plus the end-of-turn marker, so the model
  learns to stop). Multi-turn conversations train on every assistant turn. Labels are the next
  token where that token is masked in, else -100 (ignored by the loss).
- Rows: one example per row, right-padded per batch (causal attention never looks right, so
  padding needs no mask), or several examples packed per row (`packing.py`).
- Replay: `replay_ratio` of the rows are windows of pretraining text (a token-shard dir, a .txt
  file, or .jsonl with "text"), trained on every token, to limit forgetting (as in InstructGPT's
  "PPO-ptx" pretraining mix and continual-learning replay). The ratio counts rows, not tokens.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from llmlab.data.packages import iter_jsonl
from llmlab.errors import UserError
from llmlab.finetune.packing import pack
from llmlab.tokenizer.chat import END_OF_TURN, end_of_turn  # noqa: F401  (re-exported: sft.py, sft_eval.py)
from llmlab.log import get_logger

log = get_logger("llmlab.sft")


def to_messages(rec: dict) -> list[dict]:
    """A TRL record (`messages`, or `prompt`/`completion` as strings or message lists) -> messages."""
    if "messages" in rec:
        return rec["messages"]
    p, c = rec["prompt"], rec["completion"]
    p = p if isinstance(p, list) else [{"role": "user", "content": p}]
    c = c if isinstance(c, list) else [{"role": "assistant", "content": c}]
    return p + c


def load_records(specs: list[str], num_examples: int = 500, seed: int = 0, heldout_fraction: float = 0.1,
                 on_error: str = "raise") -> tuple[list[dict], list[dict]]:
    """-> (train records, held-out records). A spec is a builder name or a .jsonl file; for
    `<name>.train.jsonl` a sibling `<name>.heldout.jsonl` (as `llmlab sft data` writes) is the held-out set."""
    from llmlab.finetune.instruct.builders import BUILDERS, split_heldout
    from llmlab.finetune.jsonl import read_jsonl

    train, held = [], []
    for spec in specs:
        if spec in BUILDERS:
            tr, he = split_heldout(BUILDERS[spec](num_examples, seed), heldout_fraction, salt=spec)
        elif spec.endswith(".jsonl") or Path(spec).is_file():
            tr, skipped = read_jsonl(spec, on_error)
            if skipped:
                log.warning(f"{spec}: skipped {skipped} malformed line(s)")
            sib = Path(spec.replace(".train.jsonl", ".heldout.jsonl"))
            he = read_jsonl(sib, on_error)[0] if spec.endswith(".train.jsonl") and sib.is_file() else []
        else:
            raise UserError(f"datasets: {spec!r} is neither a builder ({', '.join(BUILDERS)}) nor a .jsonl file")
        if not tr:
            raise UserError(f"datasets: {spec!r} gave no training records")
        train += tr
        held += he
    return train, held


def encode_records(tok, records: list[dict], max_length: int, assistant_only: bool = True,
                   desc: str = "tokenize", progress: bool = True) -> tuple[list[tuple[list[int], list[int]]], dict]:
    """-> ([(input ids, labels)], stats). Examples longer than max_length + 1 tokens are cut at the
    end; one left with no trained token is dropped (counted in stats)."""
    from tqdm.auto import tqdm

    from llmlab.finetune.jsonl import validate_record
    from llmlab.tokenizer.chat import encode_chat

    view = SimpleNamespace(eos_token=end_of_turn(tok), bos_token=tok.bos_token, chat_template=tok.chat_template,
                           encode=tok.encode)
    out, cut, dropped = [], 0, 0
    for i, rec in enumerate(tqdm(records, desc=desc, disable=not progress or len(records) < 500, leave=False)):
        try:
            validate_record(rec)
        except ValueError as e:
            raise UserError(f"{desc} record {i}: {e}") from None
        ids, mask = encode_chat(view, to_messages(rec))
        if len(ids) > max_length + 1:
            ids, mask, cut = ids[:max_length + 1], mask[:max_length + 1], cut + 1
        labels = [ids[t + 1] if (mask[t + 1] or not assistant_only) else -100 for t in range(len(ids) - 1)]
        if all(y == -100 for y in labels):
            dropped += 1
            continue
        out.append((ids[:-1], labels))
    return out, {"examples": len(out), "truncated": cut, "dropped_no_target": dropped}


def replay_tokens(spec: str, tok, vocab_size: int) -> np.ndarray:
    """A flat token stream from a token-shard dir, a .jsonl file ("text" per line) or a text file
    (one document per non-empty line); documents are separated by the eos token."""
    from llmlab.data.shards import open_shards

    p = Path(spec)
    if p.is_dir():
        arr = np.concatenate([np.asarray(s.tokens, dtype=np.int64) for s in open_shards(p)])
    elif p.is_file():
        if p.suffix == ".jsonl":
            texts = [str(r["text"]) for r in iter_jsonl(p, required=("text",))]
        else:
            try:
                texts = [line for line in p.read_text(encoding="utf-8").split("\n") if line.strip()]
            except UnicodeDecodeError as e:
                raise UserError(f"replay_data {p}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
        eos = [tok.eos_id] if tok.eos_id is not None else []
        arr = np.array([t for text in texts for t in tok.encode(text) + eos], dtype=np.int64)
    else:
        raise UserError(f"replay_data not found: {p}")
    if arr.size and int(arr.max()) >= vocab_size:
        raise UserError(f"replay_data {p}: token id {int(arr.max())} >= the model's vocab_size {vocab_size} "
                        "(shards made with another tokenizer?)")
    return arr


def replay_rows(tokens: np.ndarray, n: int, max_length: int, seed: int, packing: bool) -> list[dict]:
    """n windows of max_length + 1 tokens at seeded random offsets; every token is a target."""
    if tokens.size < max_length + 1:
        raise UserError(f"replay_data has {tokens.size} tokens, fewer than one row of max_length + 1 = {max_length + 1}")
    starts = np.random.default_rng([seed, 7]).integers(0, tokens.size - max_length, size=n)
    rows = []
    for s in starts:
        w = torch.from_numpy(tokens[s:s + max_length + 1].copy())
        row = {"input_ids": w[:-1], "labels": w[1:]}
        if packing:  # one document per row, laid out like packed rows
            row.update(position_ids=torch.arange(max_length), doc_ids=torch.zeros(max_length, dtype=torch.long))
        rows.append(row)
    return rows


def make_rows(examples: list[tuple[list[int], list[int]]], max_length: int, packing: bool) -> list[dict]:
    """Examples -> rows of tensors. Packed rows carry position ids restarting per example and the
    example index of each token (doc_ids) for the block-diagonal mask."""
    if not packing:
        return [{"input_ids": torch.tensor(x), "labels": torch.tensor(y)} for x, y in examples]
    rows = []
    for members in pack([len(x) for x, _ in examples], max_length):
        xs = [examples[i] for i in sorted(members)]
        rows.append({"input_ids": torch.tensor([t for x, _ in xs for t in x]),
                     "labels": torch.tensor([t for _, y in xs for t in y]),
                     "position_ids": torch.cat([torch.arange(len(x)) for x, _ in xs]),
                     "doc_ids": torch.cat([torch.full((len(x),), j) for j, (x, _) in enumerate(xs)])})
    return rows


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows to the longest: ids with pad_id, labels -100, positions 0, doc_ids -1."""
    T = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": pad_id, "labels": -100, "position_ids": 0, "doc_ids": -1}
    out = {}
    for key in rows[0]:
        t = torch.full((len(rows), T), fill[key], dtype=torch.long)
        for i, r in enumerate(rows):
            t[i, :len(r[key])] = r[key]
        out[key] = t
    return out


class RowLoader:
    """Endless batches over in-memory rows: epoch e visits them in default_rng([seed, e]) order,
    the last batch of an epoch may be smaller. Position = (epoch, batch), so resuming is exact."""

    def __init__(self, rows: list[dict], batch_size: int, pad_id: int, seed: int = 0):
        if not rows:
            raise UserError("no training rows (empty data)")
        self.rows, self.batch_size, self.pad_id, self.seed = rows, batch_size, pad_id, seed
        self.epoch = self.position = 0

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def next(self) -> dict[str, torch.Tensor]:
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.rows))
        idx = order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
        self.position += 1
        return collate([self.rows[i] for i in idx], self.pad_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
