"""Multi-step arithmetic word problems from a seeded generator (every answer computed from its
expression, so every item is checkable): two or three operations chained in one story, e.g.
"Ana has 34 apples. She buys 5 boxes with 12 apples in each box, then gives 17 apples away.
How many apples does Ana have now?" -> 34 + 5 * 12 - 17 = 77.

Splits: the demonstrations in the prompts come from DEMO_SEED and prompt design uses DEV_SEED;
evaluation seeds are 0, 1, 2, ... Items of different seeds are different draws (a test item equal
to a demonstration is dropped, see `multistep_items`)."""
from __future__ import annotations

import json
import random

_NAMES = ["Ana", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jia"]
_OBJECTS = ["apples", "books", "coins", "pencils", "stickers", "marbles", "cookies", "cards"]
DEMO_SEED, DEV_SEED = 9001, 1000


def make_multistep(rng: random.Random, kind: int | None = None) -> dict:
    """One problem: {"question", "answer", "expression", "steps", "kind"}; the answer is the
    expression's value and `steps` the worked calculation (the chain-of-thought demonstrations)."""
    name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
    start, boxes, per = rng.randint(20, 99), rng.randint(3, 9), rng.randint(11, 49)
    total = start + boxes * per
    kind = rng.randrange(3) if kind is None else kind
    if kind == 0:
        gone = rng.randint(5, start)
        q = (f"{name} has {start} {obj}. {name} buys {boxes} boxes with {per} {obj} in each box, then gives "
             f"{gone} {obj} away. How many {obj} does {name} have now?")
        steps = f"{boxes} * {per} = {boxes * per}. {start} + {boxes * per} = {total}. {total} - {gone} = {total - gone}."
        return {"question": q, "answer": total - gone, "expression": f"{start} + {boxes} * {per} - {gone}",
                "steps": steps, "kind": 0}
    if kind == 1:
        friends = rng.randint(2, 6)
        total -= total % friends
        start = total - boxes * per
        q = (f"{name} has {start} {obj} and buys {boxes} packs of {per} {obj}. {name} then shares all the {obj} "
             f"equally among {friends} friends. How many {obj} does each friend get?")
        steps = (f"{boxes} * {per} = {boxes * per}. {start} + {boxes * per} = {total}. "
                 f"{total} / {friends} = {total // friends}.")
        return {"question": q, "answer": total // friends, "expression": f"({start} + {boxes} * {per}) / {friends}",
                "steps": steps, "kind": 1}
    price = rng.randint(2, 9)
    q = (f"{name} sells {boxes} boxes of {per} {obj} and another {start} single {obj}, at {price} dollars "
         f"for each of the {obj}. How many dollars does {name} earn?")
    steps = f"{boxes} * {per} = {boxes * per}. {boxes * per} + {start} = {total}. {total} * {price} = {total * price}."
    return {"question": q, "answer": total * price, "expression": f"({boxes} * {per} + {start}) * {price}",
            "steps": steps, "kind": 2}


def demos() -> list[dict]:
    """One worked problem of each kind (DEMO_SEED): the few-shot examples every condition sees."""
    rng = random.Random(DEMO_SEED)
    return [make_multistep(rng, k) for k in range(3)]


def multistep_items(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    seen = {d["question"] for d in demos()}
    out = []
    while len(out) < n:
        it = make_multistep(rng)
        if it["question"] not in seen:
            out.append(it)
    return out


def cot_demos() -> str:
    """The same problems as the ReAct demos, worked step by step without a tool."""
    return "Examples:\n\n" + "\n\n".join(f"Question: {d['question']}\n{d['steps']}\nFinal Answer: {d['answer']}"
                                           for d in demos())


def react_demos(tool: str) -> str:
    """Few-shot ReAct (as in Yao et al.): each demo calls `tool` once with the whole calculation."""
    from llmlab.agent.builtin import make_registry
    reg, out = make_registry([tool]), []
    for d in demos():
        args = {"expression": d["expression"]} if tool == "calculator" else \
            {"code": f"print({d['expression'].replace(' / ', ' // ')})"}
        ok, obs = reg.call(tool, args)  # the observation the tool really returns
        out.append(f"Question: {d['question']}\nThought: I write the whole calculation.\nAction: {tool}\n"
                   f"Action Input: {json.dumps(args)}\nObservation: {obs}\nThought: I know the answer.\n"
                   f"Final Answer: {d['answer']}")
    return "Examples:\n\n" + "\n\n".join(out)


REACT_EXAMPLE = """Example:
Question: Ben has 15 coins and buys 4 bags with 12 coins in each bag. How many coins does Ben have?
Thought: First the coins in the bags.
Action: calculator
Action Input: {"expression": "4 * 12"}
Observation: 48
Thought: Now add the coins he had.
Action: calculator
Action Input: {"expression": "15 + 48"}
Observation: 63
Thought: I know the answer.
Final Answer: 63"""
