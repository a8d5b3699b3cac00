"""Byte-level BPE: trainer vs a naive trainer, tiktoken fast path vs the pure-Python reference,
round trips for any bytes, tokenizer.json export vs HF `tokenizers`, SmolLM2 parity, bad input."""
from __future__ import annotations

import itertools
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab.errors import UserError
from llmlab.tokenizer import corpus
from llmlab.tokenizer.bpe import ByteLevelBPE, load_tokenizer
from llmlab.tokenizer.patterns import GPT2, GPT2_DIGITS, GPT4
from llmlab.tokenizer.train_bpe import learn_merges, train_bpe

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

MIXED = [
    "Hello, world! It's 2024; we'll test 12345 numbers and CamelCase words.",
    "  leading spaces,\ttabs\nnew lines\r\n and trailing   ",
    "人工智能是计算机科学的一个分支。中文没有空格，１９９８年１２月３１日。",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code with    indentation\n",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷 and ZWJ",
    "Ünïcödé façade naïve — “quotes” … ½ ² Ⅻ ٣ 𝟘",
    "mixed 中文 and English 混合 text 123 测试",
    "<|endoftext|> special inside text <|im_start|>user",
    "",
    " ",
    "\n\n\n",
]
INVALID = [b"\xff\xfe", b"ab\x80cd", b"\xe4\xb8", b"ok \xf0\x9f\x98 broken emoji", b"\xc3\x28 \xa0\xa1",
           b"\xed\xa0\x80 surrogate", "完整".encode() + b"\xe5"]


@pytest.fixture(scope="module")
def lines():
    return corpus.en_zh_lines(150_000)


@pytest.fixture(scope="module")
def trained(lines):
    train, _ = corpus.split_heldout(lines)
    return train_bpe(train, 700, SPECIALS, pattern=GPT2, eos_token="<|im_end|>", bos_token="<|im_start|>")


def naive_merges(counts: Counter, n: int) -> list[tuple[bytes, bytes]]:
    """Textbook BPE: recount every pair of every word for every merge (same tie-break as ours)."""
    words = {tuple(bytes([b]) for b in w.encode()): c for w, c in counts.items()}
    merges = []
    while len(merges) < n:
        pairs = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        known = {t for w in words for t in w} | {bytes([i]) for i in range(256)} | {a + b for a, b in merges}
        cands = [(-c, p) for p, c in pairs.items() if c >= 2 and p[0] + p[1] not in known]
        if not cands:
            break
        _, (a, b) = min(cands)
        merges.append((a, b))
        new = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        words = new
    return merges


def test_incremental_trainer_equals_naive_trainer():
    text = ("low lower lowest newer wider aaaa aaaaa abab ababab " * 3 + "the then there 中文中文中 日本日本 ") * 2
    counts = Counter(regex.findall(GPT2, text))
    assert learn_merges(counts, 40) == naive_merges(counts, 40)


def test_trainer_deterministic_and_sizes(lines, trained):
    train, _ = corpus.split_heldout(lines)
    again = train_bpe(train, 700, SPECIALS, pattern=GPT2)
    assert again.merges == trained.merges
    assert trained.vocab_size == 700 and trained.special["<|im_end|>"] == 699
    assert train_bpe(["abc"], 256).vocab_size == 256  # bytes only


@pytest.mark.parametrize("pattern", [GPT2, GPT4, GPT2_DIGITS])
def test_tiktoken_fast_path_equals_reference(lines, pattern):
    train, held = corpus.split_heldout(lines)
    tok = train_bpe(train, 800, SPECIALS, pattern=pattern)
    texts = MIXED + held[:60]
    for t in texts:
        assert tok.encode(t, allow_special=False) == tok.encode_reference(t), t
    for b in INVALID + [t.encode() for t in MIXED]:
        assert tok.encode_bytes(b) == tok.encode_bytes_reference(b), b
        assert tok.decode_bytes(tok.encode_bytes(b)) == b


def test_special_tokens_encode_as_one_id(trained):
    ids = trained.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == trained.special["<|im_start|>"] and ids[-1] == trained.eos_id
    assert trained.special["<|im_end|>"] not in trained.encode("<|im_end|>", allow_special=False)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_roundtrip_any_bytes(trained, data):
    assert trained.decode_bytes(trained.encode_bytes(data)) == data


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=64))
def test_roundtrip_any_text(trained, text):
    assert trained.decode(trained.encode(text)) == text


def test_export_tokenizer_json_matches_hf(tmp_path, lines):
    tokenizers = pytest.importorskip("tokenizers")
    train, held = corpus.split_heldout(lines)
    for pattern in (GPT2, GPT4, GPT2_DIGITS):
        tok = train_bpe(train, 700, SPECIALS, pattern=pattern, chat_template="{{ messages[0]['content'] }}")
        out = tok.save(tmp_path / "tok")
        hf = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
        for t in MIXED + held[:100]:
            assert hf.encode(t).ids == tok.encode(t), (pattern, t)
        back = load_tokenizer(out)
        assert back.merges == tok.merges and back.pattern == tok.pattern
        assert back.chat_template == tok.chat_template and back.special == tok.special


def smollm2_hf_reference(path):
    """HF `tokenizers` BPE built straight from the GGUF's vocab and merges, with SmolLM2's
    original pre-tokenizer Sequence[Digits(individual_digits=True), ByteLevel] (transformers'
    GGUF converter would build ByteLevel alone and split digits differently)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from llmlab.model.gguf_file import GGUFFile  # raw GGUF key/value reader (gguf.GGUFReader takes ~20 s)

    g = GGUFFile(path)
    tokens, merges = g.get("tokenizer.ggml.tokens"), g.get("tokenizer.ggml.merges")
    types = g.get("tokenizer.ggml.token_type")
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m.split(" ", 1)) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([t for t, ty in zip(tokens, types) if ty == 3])
    return tok


def real_lines(n: int) -> list[str]:
    en = list(itertools.islice(corpus.wiki_en(), n // 2))
    zh = list(itertools.islice(corpus.people_daily(), n - len(en)))
    return en + zh


@pytest.fixture(scope="module")
def smollm2_hf(smollm2_path):
    pytest.importorskip("tokenizers")
    return smollm2_hf_reference(smollm2_path)


@pytest.mark.parametrize("n", [pytest.param(10_000, marks=pytest.mark.slow), 600])
def test_smollm2_gguf_matches_hf_on_real_lines(n, smollm2_hf, smollm2_tokenizer):
    hf = smollm2_hf
    texts = real_lines(n)
    assert len(texts) == n
    ours = smollm2_tokenizer.encode_batch(texts)
    theirs = [e.ids for e in hf.encode_batch(texts)]
    bad = [t for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not bad, f"{len(bad)} lines differ, first: {bad[0][:200]!r}"
    assert smollm2_tokenizer.encode("<|im_start|>user") == hf.encode("<|im_start|>user").ids
    # where Digits-then-ByteLevel and ByteLevel alone differ: whitespace runs before a digit
    for t in ["x  1", "a\n\n 12"]:
        assert smollm2_tokenizer.encode(t) == hf.encode(t).ids
    assert smollm2_tokenizer.encode("x  1") == [104, 256, 33]  # 'x', '  ', '1' (ByteLevel alone: x, ' ', ' ', 1)


def test_smollm2_reference_encoder_agrees_on_sample(smollm2_tokenizer):
    for t in MIXED[:7] + real_lines(40):
        assert smollm2_tokenizer.encode(t, allow_special=False) == smollm2_tokenizer.encode_reference(t)


def test_gpt2_digits_pattern_equals_hf_digits_then_bytelevel():
    from tokenizers import pre_tokenizers

    from llmlab.tokenizer.bytelevel import bytes_to_token

    pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False)])
    for t in MIXED + ["a 1", "x  12 y", "3.14 and 2,000", "abc\n 1", "'s1's", "１２月 ٣٤"]:
        assert [bytes_to_token(c.encode()) for c in regex.findall(GPT2_DIGITS, t)] == \
            [p for p, _ in pre.pre_tokenize_str(t)], t


def test_bad_input_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="empty"):
        train_bpe([], 300)
    empty = tmp_path / "e.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="e.txt"):
        train_bpe(files=[empty], vocab_size=300)
    with pytest.raises(UserError, match="vocab_size=257"):
        train_bpe(["hello"], 257, ["<a>", "<b>"])
    with pytest.raises(UserError, match="vocab_size"):
        train_bpe(["hello"], 70000)
    with pytest.raises(UserError, match="collides"):
        train_bpe(["the the the the the"], 300, ["x"])  # every single byte is a learned token
    with pytest.raises(UserError, match="not found"):
        train_bpe(files=[tmp_path / "missing.txt"], vocab_size=300)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00 not utf8")
    with pytest.raises(UserError, match="bad.txt"):
        train_bpe(files=[bad], vocab_size=300)
    with pytest.raises(UserError, match="pattern"):
        train_bpe(["x"], 300, pattern="(unclosed")


def test_train_from_files_streams(tmp_path, lines):
    p = corpus.write_lines(lines[:200], tmp_path / "a.txt")
    from_file = train_bpe(files=[p], vocab_size=500)
    from_lines = train_bpe([x + "\n" for x in lines[:200]], vocab_size=500)
    assert from_file.merges == from_lines.merges
    assert isinstance(from_file, ByteLevelBPE)
