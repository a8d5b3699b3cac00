"""Byte-level BPE tokenizer (GPT-2 style): a readable reference encoder and a tiktoken fast path.

The fast path builds a `tiktoken.Encoding` in-process from our ranks (no download). tiktoken
merges the adjacent pair whose concatenation has the lowest rank, which equals classic BPE
when a token's id is its merge priority; `from_gguf` / `from_hf_dir` check that before using it.
`encode_bytes` takes any bytes (invalid UTF-8 included); `save` writes an HF `tokenizer.json`
plus `tokenizer_config.json` (with the chat template); `encode_chat` gives ids + loss mask.
Training lives in `train_bpe.py`.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import regex

from llmlab.errors import UserError
from llmlab.tokenizer.bytelevel import token_to_bytes
from llmlab.tokenizer.patterns import GGUF_PRE, GPT2

_INVALID_RUN = regex.compile("([\udc80-\udcff]+)")  # surrogateescape'd invalid UTF-8 bytes


class ByteLevelBPE:
    def __init__(self, vocab: list[bytes | None], merges: list[tuple[bytes, bytes]], special: dict[str, int],
                 pattern: str = GPT2, chat_template: str | None = None, bos_token: str | None = None,
                 eos_token: str | None = None, pad_token: str | None = None, unk_id: int | None = None):
        self.vocab = vocab  # id -> bytes (None for special ids)
        self.merges = merges
        self.special = dict(special)
        self.pattern = pattern
        self.chat_template = chat_template
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.unk_id = unk_id
        self.id_of = {}
        for i, b in enumerate(vocab):
            if b is not None and b not in self.id_of:
                self.id_of[b] = i
        self.special_of_id = {i: s for s, i in self.special.items()}

    # ---- properties -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def eos_id(self) -> int | None:
        return self.special.get(self.eos_token) if self.eos_token else None

    @property
    def bos_id(self) -> int | None:
        return self.special.get(self.bos_token) if self.bos_token else None

    @property
    def pad_id(self) -> int | None:
        return self.special.get(self.pad_token) if self.pad_token else None

    # ---- encoding ----------------------------------------------------------------------------
    @cached_property
    def _tiktoken(self):
        import tiktoken

        ranks = dict(self.id_of)
        extra = len(self.vocab)
        for b in range(256):  # bytes the vocab lacks still need a rank; they encode to unk
            if bytes([b]) not in ranks:
                ranks[bytes([b])] = extra
                extra += 1
        return tiktoken.Encoding(name="llmlab", pat_str=self.pattern, mergeable_ranks=ranks,
                                 special_tokens=self.special)

    @cached_property
    def _has_all_bytes(self) -> bool:
        return all(bytes([b]) in self.id_of for b in range(256))

    @cached_property
    def _core(self):
        """tiktoken's Rust CoreBPE plus our special set: calling it directly skips the per-call
        argument checks of `tiktoken.Encoding.encode` (they cost ~10% on short lines)."""
        enc = self._tiktoken
        return enc._core_bpe, frozenset(self.special)

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Text -> ids. With allow_special, special-token strings in the text become their ids."""
        core, specials = self._core
        try:
            ids = core.encode(text, specials) if allow_special else core.encode_ordinary(text)
        except UnicodeEncodeError:  # lone surrogates: tiktoken's wrapper replaces them
            enc = self._tiktoken
            ids = enc.encode(text, allowed_special="all") if allow_special else enc.encode_ordinary(text)
        if not self._has_all_bytes:  # only then can tiktoken return a filler rank for a missing byte
            n = len(self.vocab)
            unk = self.unk_id if self.unk_id is not None else 0
            ids = [unk if i >= n else i for i in ids]
        return ids

    def encode_batch(self, texts: list[str], allow_special: bool = True, num_threads: int = 1) -> list[list[int]]:
        if not self._has_all_bytes:
            return [self.encode(t, allow_special) for t in texts]
        kw = {"allowed_special": "all"} if allow_special else {}
        fn = self._tiktoken.encode_batch if allow_special else self._tiktoken.encode_ordinary_batch
        return fn(texts, num_threads=num_threads, **kw)

    def encode_bytes(self, data: bytes) -> list[int]:
        """Any bytes -> ids (no special tokens). Maximal valid UTF-8 runs are encoded as text; each
        run of invalid bytes is one pre-token merged with the byte-level rules, so
        `decode_bytes(encode_bytes(x)) == x` for every `x`."""
        out: list[int] = []
        for i, part in enumerate(_INVALID_RUN.split(data.decode("utf-8", "surrogateescape"))):
            if not part:
                continue
            if i % 2 == 0:  # even pieces of a capturing split are the valid text between invalid runs
                out.extend(self.encode(part, allow_special=False))
            else:
                out.extend(self._bpe_chunk(part.encode("utf-8", "surrogateescape")))
        return out

    def encode_bytes_reference(self, data: bytes) -> list[int]:
        out: list[int] = []
        for i, part in enumerate(_INVALID_RUN.split(data.decode("utf-8", "surrogateescape"))):
            if part:
                out.extend(self.encode_reference(part) if i % 2 == 0 else
                           self._bpe_chunk(part.encode("utf-8", "surrogateescape")))
        return out

    def encode_reference(self, text: str) -> list[int]:
        """Readable pure-Python BPE (no special tokens): split with the regex, then inside each
        chunk repeatedly merge the adjacent pair with the lowest merge rank."""
        out: list[int] = []
        for chunk in regex.findall(self.pattern, text):
            out.extend(self._bpe_chunk(chunk.encode("utf-8")))
        return out

    def _bpe_chunk(self, data: bytes) -> list[int]:
        rank = self._merge_rank
        parts = [bytes([b]) for b in data]
        while len(parts) > 1:
            best = min(range(len(parts) - 1), key=lambda i: rank.get((parts[i], parts[i + 1]), 1 << 60))
            if (parts[best], parts[best + 1]) not in rank:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        unk = self.unk_id if self.unk_id is not None else 0
        return [self.id_of.get(p, unk) for p in parts]

    @cached_property
    def _merge_rank(self) -> dict[tuple[bytes, bytes], int]:
        return {m: i for i, m in enumerate(self.merges)}

    # ---- decoding ----------------------------------------------------------------------------
    def decode_bytes(self, ids: list[int], skip_special: bool = False) -> bytes:
        out = []
        for i in ids:
            if i in self.special_of_id:
                if not skip_special:
                    out.append(self.special_of_id[i].encode("utf-8"))
            elif 0 <= i < len(self.vocab) and self.vocab[i] is not None:
                out.append(self.vocab[i])
            else:
                raise ValueError(f"token id {i} is outside the vocabulary (size {len(self.vocab)})")
        return b"".join(out)

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    # ---- chat --------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        from llmlab.tokenizer.chat import render_chat

        return render_chat(self.chat_template, messages, add_generation_prompt,
                           bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    # ---- saving ------------------------------------------------------------------------------
    def pre_tokenizer_json(self) -> dict:
        """The HF `tokenizers` pre-tokenizer that splits text exactly like `self.pattern`."""
        from llmlab.tokenizer.patterns import GPT2_DIGITS

        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        if self.pattern == GPT2:  # ByteLevel's built-in regex is GPT-2's
            return byte_level
        if self.pattern == GPT2_DIGITS:  # what SmolLM2's original tokenizer.json uses
            return {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                          byte_level]}
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": self.pattern}, "behavior": "Isolated", "invert": False},
            dict(byte_level, use_regex=False)]}

    def to_hf_json(self) -> dict:
        """A `tokenizer.json` (HF `tokenizers` format, BPE model) that encodes like we do."""
        from llmlab.tokenizer.bytelevel import bytes_to_token

        vocab = {bytes_to_token(b): i for i, b in enumerate(self.vocab) if b is not None}
        added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True} for t, i in sorted(self.special.items(), key=lambda x: x[1])]
        return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
                "normalizer": None, "pre_tokenizer": self.pre_tokenizer_json(), "post_processor": None,
                "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
                "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                          "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                          "ignore_merges": False, "vocab": vocab,
                          "merges": [[bytes_to_token(a), bytes_to_token(b)] for a, b in self.merges]}}

    def hf_files(self) -> dict[str, str]:
        """name -> text of `tokenizer.json` + `tokenizer_config.json` (with `chat_template`): what `save` writes,
        for a model dir written beside its weights (`save_hf_dir(..., extra_files=tok.hf_files())`)."""
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 8192,
               "clean_up_tokenization_spaces": False, "chat_template": self.chat_template,
               "bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
               "added_tokens_decoder": {str(i): {"content": t, "special": True} for t, i in self.special.items()}}
        return {"tokenizer.json": json.dumps(self.to_hf_json(), ensure_ascii=False),
                "tokenizer_config.json": json.dumps(cfg, ensure_ascii=False, indent=2)}

    def save(self, path: str | Path) -> Path:
        """Write `hf_files()` into directory `path`."""
        from llmlab.checkpoint import atomic_dir

        path = Path(path)
        with atomic_dir(path) as tmp:
            for name, text in self.hf_files().items():
                (Path(tmp) / name).write_text(text, encoding="utf-8")
        return path

    def encode_chat(self, messages: list[dict], train_on_end_of_turn: bool = True) -> tuple[list[int], list[int]]:
        """-> (ids, assistant-only loss mask), rendered by the one renderer (`chat.encode_chat`)."""
        from llmlab.tokenizer.chat import encode_chat

        return encode_chat(self, messages, train_on_end_of_turn)

    # ---- loading -----------------------------------------------------------------------------
    @classmethod
    def from_vocab(cls, tokens: list[str], merges: list[str], special_ids: set[int], **kw) -> "ByteLevelBPE":
        """tokens: id -> byte-level unicode string; merges: 'a b' strings in priority order."""
        vocab: list[bytes | None] = []
        special = {}
        for i, t in enumerate(tokens):
            if i in special_ids:
                vocab.append(None)
                special[t] = i
            else:
                try:
                    vocab.append(token_to_bytes(t))
                except KeyError:  # a non-byte-level added token: treat as special
                    vocab.append(None)
                    special[t] = i
        pairs = []
        for m in merges:
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            pairs.append((token_to_bytes(a), token_to_bytes(b)))
        tok = cls(vocab, pairs, special, **kw)
        tok._check_rank_order()
        return tok

    def _check_rank_order(self) -> None:
        last = -1
        for a, b in self.merges:
            i = self.id_of.get(a + b)
            if i is None:
                raise UserError(f"merge {a!r} + {b!r} produces a token missing from the vocabulary")
            if i <= last:
                raise UserError("token ids are not in merge order; this vocabulary cannot use the tiktoken fast path")
            last = i

    @classmethod
    def from_gguf(cls, path: str | Path) -> "ByteLevelBPE":
        from llmlab.model.gguf_file import GGUFFile

        g = path if isinstance(path, GGUFFile) else GGUFFile(path)
        model = g.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise UserError(f"{g.path}: tokenizer model '{model}' is not byte-level BPE ('gpt2')")
        pre = g.get("tokenizer.ggml.pre", "default")
        if pre not in GGUF_PRE:
            raise UserError(f"{g.path}: unsupported pre-tokenizer '{pre}' (supported: {', '.join(GGUF_PRE)})")
        tokens = g.get("tokenizer.ggml.tokens")
        types = g.get("tokenizer.ggml.token_type", [1] * len(tokens))
        special_ids = {i for i, t in enumerate(types) if t in (3, 4)}  # CONTROL, USER_DEFINED
        name = lambda k: tokens[g.get(k)] if g.get(k) is not None else None  # noqa: E731
        return cls.from_vocab(tokens, g.get("tokenizer.ggml.merges"), special_ids, pattern=GGUF_PRE[pre],
                              chat_template=g.get("tokenizer.chat_template"),
                              bos_token=name("tokenizer.ggml.bos_token_id"),
                              eos_token=name("tokenizer.ggml.eos_token_id"),
                              pad_token=name("tokenizer.ggml.padding_token_id"),
                              unk_id=g.get("tokenizer.ggml.unknown_token_id"))

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> "ByteLevelBPE":
        """Load tokenizer.json (BPE) + tokenizer_config.json (chat template, special token names)."""
        path = Path(path)
        tj = path / "tokenizer.json" if path.is_dir() else path
        if not tj.is_file():
            raise UserError(f"tokenizer file not found: {tj}")
        data = json.loads(tj.read_text(encoding="utf-8"))
        model = data.get("model", {})
        if model.get("type") != "BPE":
            raise UserError(f"{tj}: tokenizer type '{model.get('type')}' is not BPE")
        vocab = model["vocab"]
        added = {t["id"]: t["content"] for t in data.get("added_tokens", [])}
        n = max(list(vocab.values()) + list(added)) + 1
        tokens = [""] * n
        for t, i in vocab.items():
            tokens[i] = t
        for i, t in added.items():
            tokens[i] = t
        cfg_path = tj.parent / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        tokname = lambda v: v.get("content") if isinstance(v, dict) else v  # noqa: E731
        pattern = GPT2
        pre = json.dumps(data.get("pre_tokenizer"))
        if '"Digits"' in pre and '"individual_digits": true' in pre:
            from llmlab.tokenizer.patterns import GPT2_DIGITS
            pattern = GPT2_DIGITS
        elif '"Regex"' in pre:
            for pt in (data.get("pre_tokenizer") or {}).get("pretokenizers", [data.get("pre_tokenizer")]):
                if pt and pt.get("type") == "Split" and "Regex" in pt.get("pattern", {}):
                    pattern = pt["pattern"]["Regex"]
        return cls.from_vocab(tokens, model["merges"], set(added), pattern=pattern,
                              chat_template=cfg.get("chat_template"), bos_token=tokname(cfg.get("bos_token")),
                              eos_token=tokname(cfg.get("eos_token")), pad_token=tokname(cfg.get("pad_token")))


def load_tokenizer(path: str | Path) -> ByteLevelBPE:
    """A .gguf file or a directory with tokenizer.json."""
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return ByteLevelBPE.from_gguf(p)
    try:
        return ByteLevelBPE.from_hf_dir(p)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:  # malformed tokenizer.json
        raise UserError(f"{p}: malformed tokenizer file ({type(e).__name__}: {e})") from None
