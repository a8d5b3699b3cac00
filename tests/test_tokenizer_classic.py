"""The notes' classic algorithms: char BPE (worked example), WordPiece, Unigram LM, with save/load."""
from __future__ import annotations

import itertools
import math

import pytest

from llmlab.errors import UserError
from llmlab.tokenizer import corpus
from llmlab.tokenizer.char_bpe import CharBPE
from llmlab.tokenizer.unigram import SPACE, Unigram
from llmlab.tokenizer.wordpiece import WordPiece


@pytest.fixture(scope="module")
def en_text():
    return "\n".join(itertools.islice(corpus.wiki_en(), 120))


def test_char_bpe_reproduces_notes_example(tmp_path):
    log = []
    bpe = CharBPE.train("aaabdaaabac", num_merges=10, log=log)
    assert bpe.merges == [("a", "a"), ("a", "b"), ("aa", "ab")]  # Z=aa, Y=ab, X=ZY, then no pair twice
    names = {"aa": "Z", "ab": "Y", "aaab": "X"}
    symbols = bpe.encode("aaabdaaabac")
    assert "".join(names.get(s, s) for s in symbols).replace("</w>", "") == "XdXac"
    assert log == [11, 9, 7, 5]  # symbol count at each step: aaab|d|aaab|a|c = 5 at the end
    assert len(symbols) == 5
    assert bpe.decode(symbols) == "aaabdaaabac"
    bpe.save(tmp_path / "c.json")
    assert CharBPE.load(tmp_path / "c.json").encode("aaabdaaabac") == symbols


def test_char_bpe_end_of_word_marker_distinguishes_suffix(en_text):
    bpe = CharBPE.train("newest widest lowest " * 5 + "estimate " * 2, num_merges=6)
    assert bpe.encode_word("newest")[-1].endswith("est</w>")
    assert "est</w>" not in bpe.encode_word("estimate")
    big = CharBPE.train(en_text[:15000], 60)
    words = en_text.split()[:300]
    assert big.decode(big.encode(" ".join(words))) == " ".join(words)


def test_wordpiece_prefers_likelihood_over_frequency():
    # "th" is the most frequent pair, but "q"+"##u" always co-occur: higher count(ab)/(count(a)count(b))
    text = "the then that this those these " * 10 + "quiz quo " * 2
    wp = WordPiece.train(text, vocab_size=30)
    learned = [t for t in wp.vocab[1:] if len(t.replace("##", "")) > 1]
    assert learned[0] == "qu"
    # plain BPE on the same corpus merges the most frequent pair, t + h, first
    assert CharBPE.train(text, 1).merges == [("t", "h")]


def test_wordpiece_greedy_longest_match_equals_hf(en_text, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    train, held = en_text[:15000], en_text[15000:30000]
    wp = WordPiece.train(train, vocab_size=250)
    hf = tokenizers.Tokenizer(tokenizers.models.WordPiece({t: i for i, t in enumerate(wp.vocab)},
                                                          unk_token="[UNK]", max_input_chars_per_word=100))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    for line in held.split("\n")[:30]:
        assert wp.encode(line) == hf.encode(line).ids, line
    assert wp.tokenize("unaffable") == hf.encode("unaffable").tokens
    wp.save(tmp_path / "w.json")
    assert WordPiece.load(tmp_path / "w.json").encode(held[:500]) == wp.encode(held[:500])


def test_wordpiece_unknown_char_makes_word_unk():
    wp = WordPiece(["[UNK]", "a", "##b", "ab"])
    assert wp.tokenize("ab abb abc") == ["ab", "ab", "##b", "[UNK]"]


@pytest.fixture(scope="module")
def uni(en_text):
    return Unigram.train(en_text[:20000], vocab_size=300)


def test_unigram_trains_to_size_and_viterbi_is_optimal(en_text, uni, tmp_path):
    text = en_text[:20000]
    assert len(uni.vocab) == 300
    probs = [math.exp(s) for p, s in uni.pieces.items() if p != uni.unk_token]
    assert abs(sum(probs) - 1) < 1e-6
    # Viterbi = best of all segmentations (brute force on short words)
    for w in [SPACE + "the", SPACE + "nation", SPACE + "music"]:
        best = max((sum(uni.pieces[p] for p in seg), seg) for seg in _segmentations(w, uni.pieces))
        score, seg = uni.viterbi(w)
        assert math.isclose(score, best[0]) and seg == best[1]
    uni.save(tmp_path / "u.json")
    assert Unigram.load(tmp_path / "u.json").encode(text[:2000]) == uni.encode(text[:2000])
    assert uni.decode(uni.encode("the music of the nation")) == "the music of the nation"


def test_unigram_viterbi_equals_hf(en_text, uni):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = [(p, s if p != uni.unk_token else uni.min_score) for p, s in uni.pieces.items()]
    hf = tokenizers.Tokenizer(tokenizers.models.Unigram(vocab, unk_id=0, byte_fallback=False))
    known = set("".join(uni.vocab[1:]))
    for w in en_text[20000:26000].split():
        if set(w) <= known:
            assert [uni.vocab[i] for i in uni.encode(w)] == hf.encode(SPACE + w).tokens, w


def _segmentations(word, pieces):
    if not word:
        yield []
        return
    for i in range(1, len(word) + 1):
        if word[:i] in pieces:
            for rest in _segmentations(word[i:], pieces):
                yield [word[:i]] + rest


def test_classic_bad_input(tmp_path):
    with pytest.raises(UserError):
        CharBPE.train("   ", 5)
    with pytest.raises(UserError):
        WordPiece.train("", 10)
    with pytest.raises(UserError, match="vocab_size"):
        Unigram.train("abcdefg hij", 3)
    (tmp_path / "x.json").write_text('{"type": "wordpiece"}')
    with pytest.raises(UserError, match="char_bpe"):
        CharBPE.load(tmp_path / "x.json")
    with pytest.raises(UserError, match="missing.json"):
        Unigram.load(tmp_path / "missing.json")
