"""Trained verifiers (llmlab.prompt.verifier): step labels by hand, the logistic head against
scikit-learn, hidden-state features against unpadded forwards, reranking by hand."""
import pytest
import torch

from llmlab.prompt.verifier import (LogisticHead, best_of_n, prm_score, solution_states, step_labels, steps,
                                    weighted_vote)


def test_steps_and_labels_by_hand():
    sol = " 12 + 7 = 19. Then 19 * 2 = 38.\nThe answer is 38."
    assert [t.strip() for _, t in steps(sol)] == ["12 + 7 = 19.", "Then 19 * 2 = 38.", "The answer is 38."]
    assert all(sol[:e].endswith(t) for e, t in steps(sol))
    assert step_labels(sol, "38") == [1, 1, 1]
    assert step_labels(sol, "39") == [1, 1, 0]  # the stated answer is wrong
    assert step_labels(" 12 + 7 = 20. 20 * 2 = 40. The answer is 40.", "40") == [0, 0, 0]  # first error sticks
    assert step_labels(" 6 x 8 = 48. 48 / 4 = 12. 50 - 8 = 42.", "42") == [1, 1, 1]
    assert step_labels(" 7 / 2 = 3. The answer is 3.", "3") == [0, 0]  # exact fractions, no flooring


def test_logistic_head_equals_sklearn():
    from sklearn.linear_model import LogisticRegression
    g = torch.Generator().manual_seed(0)
    X = torch.randn(120, 5, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0],
                                                                             dtype=torch.float64) + 1.5
    y = ((X[:, 0] - 0.5 * X[:, 1] + 0.3 * torch.randn(120, generator=g, dtype=torch.float64)) > 0).double()
    for C in (0.05, 1.0):
        ours = LogisticHead(C=C).fit(X, y)
        Z = ((X - ours.mu) / ours.sd).numpy()
        ref = LogisticRegression(C=C, solver="newton-cholesky", tol=1e-10, max_iter=200).fit(Z, y.numpy())
        p_ref = torch.tensor(ref.predict_proba(Z)[:, 1])
        assert torch.allclose(ours.predict_proba(X), p_ref, atol=1e-6)
        assert torch.allclose(ours.w, torch.tensor(ref.coef_[0]), atol=1e-5)


class _CharTok:
    """One id per character (the tiny model has 97 ids)."""
    chars = " 0123456789+-*/=.abcdefghijklmnopqrstuvwxyzT\n"

    def encode(self, text, allow_special=False):
        return [self.chars.index(c) + 1 for c in text]

    def decode(self, ids):
        return "".join(self.chars[i - 1] for i in ids)


def test_solution_states_equal_unpadded_forwards(tiny):
    tok, prompt = _CharTok(), "q 3+4=\n"
    sols = [" 3 + 4 = 7. the answer is 7.", " 9.", " 3 + 4 = 8. no. the answer is 8."]
    states = solution_states(tiny, tok, prompt, sols)
    p = tok.encode(prompt)
    for sol, (last, st) in zip(sols, states):
        with torch.no_grad():
            h = tiny(torch.tensor([p + tok.encode(sol)]), return_hidden=True)[0, len(p):]
        assert torch.allclose(last, h[-1], atol=1e-5)
        ends = [e for e, _ in steps(sol)]
        assert st.shape[0] == len(ends)
        for row, e in zip(st, ends):  # char-level: the step's last character is token e - 1
            assert torch.allclose(row, h[e - 1], atol=1e-5)


def test_reranking_by_hand():
    answers, scores = ["5", "7", "7", "", "5"], [0.9, 0.5, 0.6, 0.99, 0.1]
    assert best_of_n(answers, scores) == ""  # the top sample has no answer: best-of-N takes it anyway
    assert best_of_n(answers[:3], scores[:3]) == "5"
    assert weighted_vote(answers, scores) == "7"  # 1.1 vs 1.0; empty answers do not vote
    assert weighted_vote(["", ""], [1, 1]) == ""

    class Fixed:
        def predict_proba(self, X):
            return X[:, 0]
    states = [(None, torch.tensor([[0.9], [0.5]])), (None, torch.tensor([[0.6]]))]
    assert prm_score(Fixed(), states) == pytest.approx([0.9 * 0.5, 0.6], rel=1e-6)
