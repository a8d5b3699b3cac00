"""Sentence-encoder fine-tuning (llmlab.rag.finetune): the loss against sentence-transformers'
MultipleNegativesRankingLoss, a few steps lower it, the saved folder loads in both libraries."""
import pytest
import torch

from llmlab.errors import UserError
from llmlab.model.encoder import minilm_dir
from llmlab.rag.embed import SentenceEncoder
from llmlab.rag.finetune import finetune_encoder, mnrl_loss, save_encoder

PAIRS = [("Berlin is the capital of which country", "Berlin is the capital and largest city of Germany."),
         ("a camellia is a flowering plant", "Camellia is a genus of flowering plants in the family Theaceae."),
         ("the adder is a venomous snake", "Vipera berus, the common European adder, is a venomous snake."),
         ("aquarium term coined by Gosse", "The term aquarium was coined by English naturalist Philip Henry Gosse.")]


def test_mnrl_by_hand():
    q = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)).double(), dim=-1)
    assert float(mnrl_loss(q, q, scale=5.0)) == pytest.approx(  # -mean log softmax of the diagonal
        float(-torch.log_softmax(5.0 * q @ q.T, 1).diagonal().mean()), rel=1e-6)
    expect = -(5.0 * (q[0] @ q[0]) - torch.logsumexp(5.0 * q[0] @ q.T, 0)) / 3  # row 0's term, by hand
    rows = -torch.log_softmax(5.0 * q @ q.T, 1).diagonal() / 3
    assert float(rows[0]) == pytest.approx(float(expect), rel=1e-6)


@pytest.mark.slow
def test_mnrl_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    feats = [st.tokenize([q for q, _ in PAIRS]), st.tokenize([p for _, p in PAIRS])]
    with torch.no_grad():
        ref = float(MultipleNegativesRankingLoss(st)(feats, torch.zeros(len(PAIRS))))
        enc = SentenceEncoder()
        ours = float(mnrl_loss(enc.embed([q for q, _ in PAIRS]), enc.embed([p for _, p in PAIRS])))
    assert ours == pytest.approx(ref, abs=1e-4)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    enc = SentenceEncoder()
    qs, ps = [q for q, _ in PAIRS], [p for _, p in PAIRS]
    with torch.no_grad():
        before = float(mnrl_loss(enc.embed(qs), enc.embed(ps)))
    losses = finetune_encoder(enc, PAIRS, steps=4, batch_size=4, lr=1e-4, warmup=1)
    with torch.no_grad():
        after = float(mnrl_loss(enc.embed(qs), enc.embed(ps)))
    return enc, before, after, losses, save_encoder(enc, minilm_dir(), tmp_path_factory.mktemp("ft") / "tuned")


TEXTS = [p for _, p in PAIRS] + ["an unrelated sentence about trains"]


def test_finetune_lowers_loss_and_saves(tuned):
    enc, before, after, losses, out = tuned
    assert len(losses) == 4 and losses[0] == pytest.approx(before, abs=1e-5)
    assert after < 0.5 * before
    mine = enc.encode(TEXTS)
    assert torch.allclose(SentenceEncoder(out).encode(TEXTS), mine, atol=1e-6)  # strict reload
    assert not torch.allclose(SentenceEncoder().encode(TEXTS), mine, atol=1e-3)  # the weights did change
    with pytest.raises(UserError):
        save_encoder(enc, minilm_dir(), minilm_dir())
    with pytest.raises(UserError):
        finetune_encoder(enc, PAIRS[:1])


@pytest.mark.slow
def test_saved_folder_loads_in_sentence_transformers(tuned):
    from sentence_transformers import SentenceTransformer
    enc, _, _, _, out = tuned
    theirs = torch.tensor(SentenceTransformer(str(out), device="cpu").encode(TEXTS, normalize_embeddings=True))
    assert float((theirs * enc.encode(TEXTS)).sum(1).min()) > 1 - 1e-5
