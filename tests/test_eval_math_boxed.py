"""\\boxed{} extraction and answer equivalence, against lm-eval's hendrycks_math utilities
(the MATH paper's reference code) and hand cases."""
from __future__ import annotations

import importlib.util
import random

import pytest

from llmlab.eval.tasks.math_boxed import MathBoxed, as_number, is_equiv, last_boxed, make_problem, normalize

CASES = [
    ("so the answer is $\\boxed{5}$.", "5"),
    ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),  # nested braces
    ("first \\boxed{3} then \\boxed{\\sqrt{\\frac{a}{b}}}", "\\sqrt{\\frac{a}{b}}"),  # the last box, 2 levels
    ("\\boxed{\\{1, 2\\}} done", "\\{1, 2\\}"),  # escaped braces are characters, not groups: balanced here
    ("answer: \\fbox{x^{2}}", "x^{2}"),
    ("$\\boxed 7$", "7"),
    ("no box here", None),
    ("\\boxed{\\frac{1}{2}", None),  # unbalanced
]


@pytest.mark.parametrize("text,want", CASES)
def test_last_boxed(text, want):
    assert last_boxed(text) == want


def _reference():
    spec = importlib.util.find_spec("lm_eval")
    path = spec.submodule_search_locations[0] + "/tasks/hendrycks_math/utils.py"
    src = open(path).read().replace("import datasets\n", "")  # the dataset helpers are not needed
    mod = {}
    exec(compile(src, path, "exec"), mod)
    return mod


def test_extraction_matches_the_math_reference():
    ref = _reference()
    for text, _ in CASES:
        if "\\boxed " in text or "\\fbox" in text:
            continue  # the reference returns the box with its command; covered above
        r = ref["last_boxed_only_string"](text)
        ours = last_boxed(text)
        assert (ref["remove_boxed"](r) if r else None) == ours, text


EQUIV = [("\\frac{1}{2}", "\\dfrac{1}{2}", True), ("\\frac12", "\\frac{1}{2}", True), ("1/2", "\\frac{1}{2}", True),
         ("0.5", "\\frac{1}{2}", True), ("\\left(3\\right)", "(3)", True), ("x = 4", "4", True),
         ("10^\\circ", "10", True), ("5.", "5", True), ("\\frac{2}{4}", "\\frac{1}{2}", True),
         ("5 \\text{ cm}", "5", True), ("-\\frac{3}{4}", "\\frac{-3}{4}", True),
         ("\\frac{1}{3}", "0.33", False), ("2\\sqrt{3}", "2\\sqrt{2}", False), ("12", "21", False)]


@pytest.mark.parametrize("a,b,want", EQUIV)
def test_equivalence(a, b, want):
    assert is_equiv(a, b) == want


def test_equivalence_agrees_with_the_reference_where_it_normalises():
    ref = _reference()
    for a, b, want in EQUIV:
        if ref["is_equiv"](a, b):  # whatever the reference accepts, we accept too
            assert is_equiv(a, b), (a, b)


def test_generated_problems_have_checkable_answers():
    rng = random.Random(0)
    for _ in range(300):
        q, a = make_problem(rng)
        assert is_equiv(last_boxed(f"so $\\boxed{{{a}}}$"), a) and not is_equiv("999999", a)
        assert as_number(normalize(a)) is not None or "\\sqrt" in a
    items = MathBoxed().items(20, seed=1)
    assert len({it["problem"] for it in items}) == 20 and all("\\boxed" in it["prompt"] for it in items)


class _Ctx:
    def __init__(self, replies):
        self.replies = iter(replies)

    def generate(self, prompt, max_new_tokens=0, stop=()):
        return type("G", (), {"text": next(self.replies)})()


def test_evaluate_scores_boxed_answers():
    items = MathBoxed().items(3, seed=2)
    replies = [f"work... $\\boxed{{{items[0]['answer']}}}$", "I think it is \\boxed{123456}", "no box"]
    res = MathBoxed().evaluate(_Ctx(replies), items)
    assert res["exact_match"] == pytest.approx(1 / 3) and res["boxed_rate"] == pytest.approx(2 / 3)


def test_emergence_plot_writes_both_panels(tmp_path):
    from llmlab.eval.emergence import main, plot
    pts = [{"model": f"m{i}", "params": 10 ** (5 + i), "task": "arithmetic", "n": 10, "exact_match": e,
            "answer_logprob_per_token": lp} for i, (e, lp) in enumerate([(0.0, -6.0), (0.0, -3.0), (0.4, -1.0)])]
    plot(pts, tmp_path / "e.png")
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"
    assert main([str(tmp_path / "x.png")]) == 2  # no models: usage


def test_emergence_measure_smooth_metric_by_hand(monkeypatch):
    """`measure`'s log p per gold-answer token equals a plain forward pass summed by hand."""
    import torch

    import llmlab.infer.model_and_tokenizer as mt
    from llmlab.eval.emergence import measure
    from llmlab.eval.tasks import get_task
    from llmlab.model import ModelConfig, Transformer

    class ByteTok:  # bytes mod 96 (+ EOS 96)
        bos_id, eos_id, chat_template = None, 96, None

        def encode(self, text, allow_special=False):
            return [b % 96 for b in text.encode("utf-8")]

        def decode(self, ids):
            return bytes(32 + i for i in ids if i < 96).decode("latin-1")

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    max_position_embeddings=512)).eval()
    monkeypatch.setattr(mt, "load_model_and_tokenizer", lambda name, device, dtype: (model, ByteTok()))
    got = measure("tiny", "arithmetic", 4)
    items, tok, total, n = get_task("arithmetic").items(4, 1234), ByteTok(), 0.0, 0
    with torch.no_grad():
        for it in items:
            ctx, cont = tok.encode(it["prompt"]), tok.encode(" " + it["answer"])
            logp = model(torch.tensor([ctx + cont])).log_softmax(-1)[0]
            total += sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
            n += len(cont)
    assert got["n"] == 4 and got["params"] == sum(p.numel() for p in model.parameters())
    assert got["answer_logprob_per_token"] == pytest.approx(total / n, abs=1e-4)
    assert 0.0 <= got["exact_match"] <= 1.0
