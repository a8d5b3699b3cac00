import itertools

import pytest

from llmlab.data.dedup_exact import ExactDeduper, dedup_key
from llmlab.data.langid import detect_language
from llmlab.data.normalize import normalize_text
from llmlab.data.quality import (QualityConfig, dup_line_fracs, dup_ngram_char_frac, quality_reason,
                                 top_ngram_char_frac, words)
from llmlab.data.sources import iter_documents

CFG = QualityConfig()
GOOD_EN = ("The river runs through the old town, and the people who live there have built their houses "
           "close to the water. In spring the fields turn green and the farmers go out with their tools.")


def test_normalize():
    assert normalize_text("  a<br>b <a href='x'>link</a>\r\n\n\n\nc\x00d  \t\n") == "ab link\n\ncd"
    assert normalize_text("e\u0301") == "\u00e9"  # NFC
    assert normalize_text("keep <EMAIL> and 3 < 4 > 2") == "keep <EMAIL> and 3 < 4 > 2"


@pytest.mark.parametrize("text,lang", [
    (GOOD_EN, "en"), ("中华人民共和国成立于一九四九年。", "zh"), ("这本书很好 but the ending was weak", "zh"),
    ("Привет, как дела? Это русский текст.", "other"), ("12345 67890 !!!", "other"),
    ("これはテストです。カタカナとひらがな", "other"), ("東京は日本の首都です。", "other"),
    ("The Journey to the West (西游记) is a Chinese novel published in the 16th century.", "en"),
])
def test_langid(text, lang):
    assert detect_language(text) == lang


def test_langid_on_real_sources():
    for src, lang in [("wiki_en", "en"), ("poetry_en", "en"), ("news_zh", "zh"), ("reviews_zh", "zh"),
                      ("idioms_zh", "zh")]:
        docs = list(itertools.islice(iter_documents(src), 50))
        assert sum(detect_language(d) == lang for d in docs) >= 48, src


def test_words_split_han_characters():
    assert words("Hello, world! 你好世界 x2") == ["Hello", "world", "你", "好", "世", "界", "x2"]


def test_ngram_repetition_hand_computed():
    ws = ["a", "b", "a", "b", "c"]
    # most frequent 2-gram (a, b) occurs twice: 2 chars x 2 / 5 chars
    assert top_ngram_char_frac(ws, 2) == pytest.approx(4 / 5)
    assert top_ngram_char_frac(["a", "b", "c"], 2) == 0.0
    # 2-grams: ab, ba, (ab repeated at 2 -> covers words 2,3), then 'c' ends: 2 of 5 chars
    assert dup_ngram_char_frac(ws, 2) == pytest.approx(2 / 5)
    assert dup_line_fracs("x\ny\nx\nx") == (pytest.approx(0.5), pytest.approx(0.5))


def test_quality_passes_good_text_and_real_docs():
    assert quality_reason(GOOD_EN, "en", CFG) is None
    wiki = list(itertools.islice(iter_documents("wiki_en"), 100))
    assert sum(quality_reason(d, "en", CFG) is None for d in wiki) >= 95
    news = list(itertools.islice(iter_documents("news_zh"), 100))
    assert sum(quality_reason(d, "zh", CFG) is None for d in news) >= 90


@pytest.mark.parametrize("text,lang,reason", [
    ("too short text", "en", "too_few_words"),
    ("价格 12345678 99887766 55443322 11223344 1234 5678 90 12 34 56 78 很好", "zh", "digit_ratio"),
    ("# one # two # three # four # five # six # seven # eight # nine # ten the and of", "en", "symbol_word_ratio"),
    ("\n".join(["an item with the old and new"] * 3 + ["the other one and that"] * 8), "en", "dup_lines"),
    ("\n".join(f"line {i} of the story goes on and on into the dark night..." for i in range(10)), "en",
     "ellipsis_lines"),
    ("Lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt", "en", "stopwords"),
    ("the cat and the dog " * 20, "en", "dup_lines_or_ngram"),
    ("a b c d e f g h i j k l m n the of and to with that", "en", "mean_word_length"),
])
def test_quality_catches_planted_bad_docs(text, lang, reason):
    got = quality_reason(text, lang, CFG)
    if reason == "dup_lines_or_ngram":
        assert got is not None and ("gram" in got or "dup" in got)
    else:
        assert got == reason


def test_line_checks_need_several_lines():
    one_line = "这本书写得很好，我给宝贝讲了很多遍，他很喜欢里面的故事和图画，每天晚上都要听……"
    assert quality_reason(one_line, "zh", CFG) is None
    assert quality_reason("\n".join([one_line] * 1 + [one_line[:-2] + f"第{i}次……" for i in range(3)]), "zh",
                          CFG) == "ellipsis_lines"


def test_exact_dedup_normalises_case_space_punctuation():
    d = ExactDeduper()
    assert not d.is_duplicate("Hello, World!  This is a test.")
    assert d.is_duplicate("hello world this is a TEST")
    assert not d.is_duplicate("hello world this is another test")
    assert dedup_key("你好，世界") == dedup_key("你好 世界！")
