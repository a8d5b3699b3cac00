"""CLI verbs: `llmlab tokenizer train|encode|decode|eval`."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.verb import Verb, verb
from llmlab.errors import UserError, require

VERBS: dict[str, Verb] = {}

PATTERNS = ("gpt2", "gpt4", "gpt2_digits")
DEFAULT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def resolve_pattern(name: str) -> str:
    from llmlab.tokenizer import patterns

    return {"gpt2": patterns.GPT2, "gpt4": patterns.GPT4, "gpt2_digits": patterns.GPT2_DIGITS}.get(name, name)


def open_tokenizer(ref: str):
    """'smollm2', a .gguf file, or a directory/file with tokenizer.json."""
    from llmlab.tokenizer.bpe import load_tokenizer

    if ref.lower() == "smollm2":
        from llmlab.data.packages import packaged_path
        return load_tokenizer(packaged_path("smollm2"))
    if not Path(ref).exists():
        raise UserError(f"tokenizer not found: '{ref}' (a tokenizer dir, tokenizer.json, .gguf or 'smollm2')")
    return load_tokenizer(ref)


@dataclass
class TrainConfig:
    files: list[str] = field(default_factory=list, metadata={"help": "UTF-8 text files (streamed); empty = packaged en+zh corpus"})
    output_dir: str = field(default="runs/tokenizer", metadata={"help": "writes tokenizer.json + tokenizer_config.json"})
    vocab_size: int = field(default=32768, metadata={"help": "256 bytes + merges + special tokens (<= 65536)"})
    pattern: str = field(default="gpt2", metadata={"help": "gpt2, gpt4, gpt2_digits or a regex"})
    special_tokens: list[str] = field(default_factory=lambda: list(DEFAULT_SPECIALS), metadata={"help": "never split, never merged"})
    min_frequency: int = field(default=2, metadata={"help": "stop when the best pair is rarer"})
    max_bytes: int = field(default=0, metadata={"help": "packaged corpus only: use about this many bytes (0 = all)"})
    chat_template: str = field(default="chatml", metadata={"help": "'chatml', 'none' or a Jinja template"})
    bos_token: str = field(default="<|im_start|>", metadata={"help": "must be a special token (or empty)"})
    eos_token: str = field(default="<|im_end|>", metadata={"help": "must be a special token (or empty)"})
    pad_token: str = field(default="<|endoftext|>", metadata={"help": "must be a special token (or empty)"})
    progress: bool = field(default=True, metadata={"help": "progress bars on stderr"})


@verb(VERBS, "tokenizer train", TrainConfig)
def run_train(cfg: TrainConfig) -> int:
    """train a byte-level BPE tokenizer (streams files, writes tokenizer.json)

    Example: llmlab tokenizer train files=a.txt,b.txt vocab_size=32768 output_dir=runs/tok
    """
    from llmlab.device import setup_threads
    from llmlab.tokenizer import corpus
    from llmlab.tokenizer.chat import CHATML
    from llmlab.tokenizer.train_bpe import train_bpe

    setup_threads()
    for key in ("bos_token", "eos_token", "pad_token"):
        v = getattr(cfg, key)
        if v and v not in cfg.special_tokens:
            raise UserError(f"config key '{key}': {v!r} is not one of special_tokens {cfg.special_tokens}")
    template = {"chatml": CHATML, "none": None}.get(cfg.chat_template, cfg.chat_template)
    lines = None
    if not cfg.files:
        lines, _ = corpus.split_heldout(corpus.en_zh_lines(cfg.max_bytes or None))
    t0 = time.perf_counter()
    tok = train_bpe(lines, cfg.vocab_size, cfg.special_tokens, resolve_pattern(cfg.pattern), files=cfg.files or None,
                    min_frequency=cfg.min_frequency, progress=cfg.progress, chat_template=template,
                    bos_token=cfg.bos_token or None, eos_token=cfg.eos_token or None, pad_token=cfg.pad_token or None)
    secs = time.perf_counter() - t0
    out = tok.save(cfg.output_dir)
    print(json.dumps({"output_dir": str(out), "vocab_size": tok.vocab_size, "merges": len(tok.merges),
                      "train_seconds": round(secs, 2)}))
    return 0


@dataclass
class EncodeConfig:
    tokenizer: str = field(default="smollm2", metadata={"help": "tokenizer dir, tokenizer.json, .gguf or 'smollm2'"})
    text: str = field(default="", metadata={"help": "text to encode (or use input_file)"})
    input_file: str = field(default="", metadata={"help": "encode this UTF-8 file, one JSON id list per line"})
    allow_special: bool = field(default=True, metadata={"help": "special-token strings in the text become their ids"})


@verb(VERBS, "tokenizer encode", EncodeConfig)
def run_encode(cfg: EncodeConfig) -> int:
    """text -> token ids (JSON)

    Example: llmlab tokenizer encode tokenizer=smollm2 text='Hello world'
    """
    tok = open_tokenizer(cfg.tokenizer)
    if cfg.input_file:
        p = Path(cfg.input_file)
        try:
            lines = p.read_text(encoding="utf-8-sig").splitlines()  # a leading BOM is no text
        except OSError as e:
            raise UserError(f"config key 'input_file': cannot read {p}: {e}") from None
        except UnicodeDecodeError:
            from llmlab.data.packages import not_utf8
            raise not_utf8(p, "config key 'input_file': ") from None
        for ids in tok.encode_batch(lines, cfg.allow_special):
            print(json.dumps(ids))
        return 0
    text = cfg.text if cfg.text else sys.stdin.read()
    print(json.dumps(tok.encode(text, cfg.allow_special)))
    return 0


@dataclass
class DecodeConfig:
    tokenizer: str = field(default="smollm2", metadata={"help": "tokenizer dir, tokenizer.json, .gguf or 'smollm2'"})
    ids: list[int] = field(default_factory=list, metadata={"help": "comma-separated token ids"})
    skip_special: bool = field(default=False, metadata={"help": "drop special tokens from the output"})


@verb(VERBS, "tokenizer decode", DecodeConfig)
def run_decode(cfg: DecodeConfig) -> int:
    """token ids -> text

    Example: llmlab tokenizer decode tokenizer=smollm2 ids=19556,905
    """
    tok = open_tokenizer(cfg.tokenizer)
    try:
        print(tok.decode(cfg.ids, cfg.skip_special))
    except ValueError as e:
        raise UserError(f"config key 'ids': {e}") from None
    return 0


@dataclass
class EvalConfig:
    tokenizer: str = field(default="", metadata={"help": "our trained tokenizer dir; empty = train one now on the packaged train split"})
    vocab_size: int = field(default=8192, metadata={"help": "vocab size for the tokenizers trained here (ours when tokenizer is empty, and HF's)"})
    max_bytes: int = field(default=4_000_000, metadata={"help": "about this many bytes of the packaged en+zh corpus (0 = all)"})
    compare_hf: bool = field(default=True, metadata={"help": "train HF tokenizers' BpeTrainer on the same lines"})
    compare_smollm2: bool = field(default=True, metadata={"help": "include SmolLM2's tokenizer"})


@verb(VERBS, "tokenizer eval", EvalConfig)
def run_eval(cfg: EvalConfig) -> int:
    """bytes/token and tokens/char on held-out en/zh vs HF and SmolLM2

    Example: llmlab tokenizer eval vocab_size=8192 max_bytes=4000000
    """
    from llmlab.device import setup_threads
    from llmlab.tokenizer import corpus
    from llmlab.tokenizer.evaluate import compression, hf_batch, train_hf_bpe
    from llmlab.tokenizer.train_bpe import train_bpe

    setup_threads()
    lines = corpus.en_zh_lines(cfg.max_bytes or None)
    train, held = corpus.split_heldout(lines)
    cjk = lambda s: sum("\u4e00" <= ch <= "\u9fff" for ch in s) > len(s) // 4  # noqa: E731
    held_sets = {"en": [x for x in held if not cjk(x)], "zh": [x for x in held if cjk(x)]}
    vocab = cfg.vocab_size
    if cfg.tokenizer:
        ours = open_tokenizer(cfg.tokenizer)
        vocab = ours.vocab_size
    else:
        ours = train_bpe(train, vocab, DEFAULT_SPECIALS)
    rows = {"ours": lambda t: ours.encode_batch(t, allow_special=False)}
    if cfg.compare_hf:
        rows["hf_bpe"] = hf_batch(train_hf_bpe(train, vocab, DEFAULT_SPECIALS))
    if cfg.compare_smollm2:
        sm = open_tokenizer("smollm2")
        rows["smollm2"] = lambda t: sm.encode_batch(t, allow_special=False)
    result = {name: {lang: compression(fn, texts) for lang, texts in held_sets.items()} for name, fn in rows.items()}
    print(f"held-out: en {sum(map(len, held_sets['en']))} chars, zh {sum(map(len, held_sets['zh']))} chars; "
          f"trained on {sum(len(x.encode()) for x in train) / 1e6:.1f} MB at vocab {vocab} (smollm2: 49152)")
    print(f"{'tokenizer':<10} {'en bytes/tok':>12} {'en tok/char':>12} {'zh bytes/tok':>12} {'zh tok/char':>12}")
    for name, r in result.items():
        print(f"{name:<10} {r['en']['bytes_per_token']:>12.3f} {r['en']['tokens_per_char']:>12.3f} "
              f"{r['zh']['bytes_per_token']:>12.3f} {r['zh']['tokens_per_char']:>12.3f}")
    print(json.dumps({"vocab_size": vocab, "results": result}))
    return 0


# ---- `data tokenize`: the data stage's corpus -> token shards (here: it needs a tokenizer) ----

@dataclass
class DataTokenizeConfig:
    data_dir: str = field(default="runs/data", metadata={"help": "directory with train.jsonl / val.jsonl from `data build`"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer path (.gguf file or dir with tokenizer.json); required"})
    out_dir: str = field(default="", metadata={"help": "shard output dir (default: <data_dir>/tokens); writes train/ and val/"})
    shard_tokens: int = field(default=1 << 24, metadata={"help": "tokens per shard file (documents never straddle shards)"})
    append_eos: bool = field(default=True, metadata={"help": "append the tokenizer's EOS id after every document"})
    progress: bool = field(default=True, metadata={"help": "a progress bar (documents) on stderr"})


def _count_records(path: Path) -> int:
    """Non-blank lines of a JSONL file (the progress bar's total; one fast pass over its bytes)."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


@verb(VERBS, "data tokenize", DataTokenizeConfig)
def run_tokenize(cfg: DataTokenizeConfig) -> int:
    """tokenize train/val JSONL into memory-mapped token shards

    Example: llmlab data tokenize data_dir=runs/data tokenizer=runs/tok
    """
    from tqdm import tqdm

    from llmlab.checkpoint import atomic_dir
    from llmlab.data.commands import iter_jsonl_texts
    from llmlab.data.shards import write_shards
    from llmlab.device import setup_threads
    from llmlab.tokenizer.bpe import load_tokenizer

    setup_threads()
    require(cfg.tokenizer, "tokenizer is required: pass tokenizer=<path to .gguf or tokenizer dir>")
    if not Path(cfg.tokenizer).exists():
        raise UserError(f"tokenizer not found: {cfg.tokenizer}")
    for split in ("train", "val"):  # both inputs first: a missing val.jsonl is found before train is written
        if not (Path(cfg.data_dir) / f"{split}.jsonl").is_file():
            raise UserError(f"data_dir={cfg.data_dir}: no {split}.jsonl (one {{\"text\": ...}} object per line)")
    tok = load_tokenizer(cfg.tokenizer)
    out = Path(cfg.out_dir or Path(cfg.data_dir) / "tokens")
    for split in ("train", "val"):
        with atomic_dir(out / split) as tmp:  # a bad line leaves no half-written (or half-replaced) shard folder
            src = Path(cfg.data_dir) / f"{split}.jsonl"
            with tqdm(iter_jsonl_texts(src), total=_count_records(src), desc=f"tokenize {split}", unit=" docs",
                      disable=not cfg.progress, file=sys.stderr, mininterval=0.5) as texts:
                index = write_shards(texts, tok, tmp, shard_tokens=cfg.shard_tokens, append_eos=cfg.append_eos,
                                     source=str(src))
        print(f"{split}: {index['num_docs']} documents, {index['num_tokens']} tokens ({index['dtype']}) "
              f"in {len(index['shards'])} shard(s) -> {out / split}")
    return 0
