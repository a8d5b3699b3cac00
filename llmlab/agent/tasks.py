"""Multi-step arithmetic word problems from a seeded generator (every answer computed, so every item
is checkable): two or three operations chained in one story, e.g.
"Ana has 34 apples. She buys 5 boxes with 12 apples in each box, then gives 17 apples away.
How many apples does Ana have now?" -> 34 + 5 * 12 - 17 = 77."""
from __future__ import annotations

import random

_NAMES = ["Ana", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jia"]
_OBJECTS = ["apples", "books", "coins", "pencils", "stickers", "marbles", "cookies", "cards"]


def make_multistep(rng: random.Random) -> tuple[str, int]:
    name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
    start, boxes, per = rng.randint(20, 99), rng.randint(3, 9), rng.randint(11, 49)
    total = start + boxes * per
    kind = rng.randrange(3)
    if kind == 0:
        gone = rng.randint(5, start)
        return (f"{name} has {start} {obj}. {name} buys {boxes} boxes with {per} {obj} in each box, then gives "
                f"{gone} {obj} away. How many {obj} does {name} have now?", total - gone)
    if kind == 1:
        friends = rng.randint(2, 6)
        total -= total % friends
        start = total - boxes * per
        return (f"{name} has {start} {obj} and buys {boxes} packs of {per} {obj}. {name} then shares all the {obj} "
                f"equally among {friends} friends. How many {obj} does each friend get?", total // friends)
    price = rng.randint(2, 9)
    return (f"{name} sells {boxes} boxes of {per} {obj} and another {start} single {obj}, at {price} dollars "
            f"for each of the {obj}. How many dollars does {name} earn?", total * price)


def multistep_items(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [dict(zip(("question", "answer"), make_multistep(rng))) for _ in range(n)]


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
