"""Held-out prompting results for a model: accuracy and tokens per method on arithmetic word
problems (llmlab.eval.tasks.arithmetic, single step), wiki cloze (llmlab.eval.tasks.cloze) and Game
of 24 (llmlab.prompt.game24). Test items come from `seed`; demonstration pools from other seeds
(never a test item)."""
from __future__ import annotations

import random
import sys

from llmlab.eval.squad import exact_match
from llmlab.eval.tasks.arithmetic import last_int, make_problem
from llmlab.prompt import game24
from llmlab.prompt.fewshot import DemoSelector, build_prompt
from llmlab.prompt.reasoning import cot_prompt, extract_answer, least_to_most, self_consistency

ARITH_COT_DEMOS = [
    {"question": "Mia has 12 cards and gets 7 more. How many cards does Mia have now?",
     "rationale": "Mia starts with 12 cards. 12 + 7 = 19.", "answer": "19"},
    {"question": "What is 6 times 8?", "rationale": "6 times 8 means 6 * 8 = 48.", "answer": "48"},
]


def arithmetic_items(n: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng, pool_rng = random.Random(seed), random.Random(seed + 7919)
    pool = [dict(zip(("question", "answer"), make_problem(pool_rng))) for _ in range(64)]
    seen = {d["question"] for d in pool}
    items = []
    while len(items) < n:
        q, a = make_problem(rng)
        if q not in seen:
            seen.add(q)
            items.append({"question": q, "answer": str(a)})
    return items, pool


def cloze_items(n: int, seed: int) -> tuple[list[dict], list[dict]]:
    from llmlab.eval.data import wiki_extracts
    from llmlab.eval.tasks.cloze import seeded_items
    ex = [e["extract"] for e in wiki_extracts()]
    out = [{"question": f"Passage: {it['passage']}\nSentence: {it['question']}", "answer": it["answer"]}
           for it, _ in seeded_items(ex, n + 32, seed)]
    return out[:n], out[n:]  # the pool: other articles' items


def run_arithmetic(llm, method: str, n: int, seed: int, k: int = 0, selection: str = "random",
                   order: str = "selected", encoder=None) -> dict:
    items, pool = arithmetic_items(n, seed)
    sel = DemoSelector(pool, encoder=encoder)
    correct, tok0 = 0, llm.tokens
    if method == "auto_cot":  # demos built once from the pool's questions; their cost counts too
        from llmlab.prompt.auto_cot import auto_cot_demos
        auto_demos = auto_cot_demos(llm, [d["question"] for d in pool], k=max(k, 2), encoder=encoder, seed=seed)
    for it in items:
        q = it["question"]
        if method == "kshot":
            idx = sel.order(q, sel.select(q, k, selection, seed), order, seed)
            pred = last_int(llm.complete(build_prompt([pool[i] for i in idx], q), 12, stop=("\n",)))
        elif method == "cot_zero":
            pred = extract_answer(llm.complete(cot_prompt(q), 96, stop=("\nQuestion:",)))
        elif method == "cot_few":
            pred = extract_answer(llm.complete(cot_prompt(q, ARITH_COT_DEMOS), 96, stop=("\nQuestion:",)))
        elif method == "auto_cot":
            pred = extract_answer(llm.complete(cot_prompt(q, auto_demos), 96, stop=("\nQuestion:",)))
        elif method == "self_consistency":
            pred, _ = self_consistency(llm, cot_prompt(q, ARITH_COT_DEMOS), n=5, seed=seed)
        elif method == "least_to_most":
            pred, _ = least_to_most(llm, q)
        else:
            raise ValueError(method)
        correct += pred == it["answer"]
    return {"task": "arithmetic", "method": method, "k": k, "selection": selection if method == "kshot" else "",
            "order": order if method == "kshot" else "", "seed": seed, "accuracy": correct / n,
            "tokens_per_item": (llm.tokens - tok0) / n, "n": n}


def run_cloze(llm, n: int, seed: int, k: int, selection: str, encoder=None) -> dict:
    items, pool = cloze_items(n, seed)
    sel = DemoSelector(pool, encoder=encoder)
    tmpl = "{question}\nThe blank is: {answer}\n\n"
    em, tok0 = 0.0, llm.tokens
    for it in items:
        idx = sel.select(it["question"], k, selection, seed)
        prompt = build_prompt([pool[i] for i in idx], it["question"], template=tmpl)
        em += exact_match(llm.complete(prompt, 16, stop=("\n",)).strip(), it["answer"])
    return {"task": "wiki_cloze", "method": "kshot", "k": k, "selection": selection, "order": "selected", "seed": seed,
            "accuracy": em / n, "tokens_per_item": (llm.tokens - tok0) / n, "n": n}


def run_game24(llm, method: str, n: int, seed: int) -> dict:
    puzzles = game24.make_puzzles(n, seed)
    fns = {"direct": lambda p: game24.direct(llm, p), "best_of_5": lambda p: game24.best_of_n(llm, p, 5),
           "got_3": lambda p: game24.got_aggregate(llm, p, 3), "tot_bfs": lambda p: game24.tot_bfs(llm, p, breadth=2),
           "tot_bfs_vote": lambda p: game24.tot_bfs(llm, p, breadth=2, evaluator="vote"),
           "tot_dfs": lambda p: game24.tot_dfs(llm, p, max_nodes=6)}
    ok, tok0 = 0, llm.tokens
    for p in puzzles:
        ans = fns[method](p)
        ok += game24.check(ans, p)
        print(f"    game24 {method} {p}: {ans!r} {'ok' if game24.check(ans, p) else 'wrong'}", file=sys.stderr)
    return {"task": "game24", "method": method, "seed": seed, "accuracy": ok / n, "tokens_per_item": (llm.tokens - tok0) / n,
            "n": n}


JSON_SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                                "year": {"type": "integer"}, "famous": {"type": "boolean"}},
               "required": ["name", "year", "famous"]}
JSON_TOPICS = ["the Eiffel Tower", "Albert Einstein", "the Moon landing", "Mount Everest", "the Beatles", "Python",
               "the Great Wall", "Marie Curie", "the Titanic", "Mozart", "the Internet", "Leonardo da Vinci"]


def run_json_validity(llm, n: int, max_new_tokens: int = 48) -> dict:
    """Share of outputs that parse and fit JSON_SCHEMA, unconstrained (asked nicely, schema in the
    prompt) vs under the schema constraint; validity checked with jsonschema_rs if installed, else
    by the schema's own regex (stricter: key order too)."""
    import json

    import regex

    from llmlab.infer.constrained import Constraint, generate_constrained, schema_to_regex
    try:
        import jsonschema_rs
        valid = jsonschema_rs.validator_for(JSON_SCHEMA).is_valid
    except ImportError:
        pat = regex.compile(schema_to_regex(JSON_SCHEMA))

        def valid(obj):
            return pat.fullmatch(json.dumps(obj, ensure_ascii=False)) is not None
    c = Constraint.json_schema(JSON_SCHEMA, llm.tok)
    counts = {"unconstrained": 0, "constrained": 0}
    for topic in JSON_TOPICS[:n]:
        msgs = [{"role": "user", "content": f"Give a JSON object about {topic} with keys name (string), year (integer) "
                 f"and famous (boolean), following this JSON schema: {json.dumps(JSON_SCHEMA)}. Output only the JSON."}]
        ids = llm.tok.encode(llm.tok.apply_chat_template(msgs, add_generation_prompt=True))
        for name, text in (("unconstrained", llm.chat(msgs, max_new_tokens)),
                           ("constrained", generate_constrained(llm.model, llm.tok, ids, c, max_new_tokens))):
            try:
                ok = valid(json.loads(text.strip().removeprefix("```json").removesuffix("```").strip()))
            except (json.JSONDecodeError, ValueError):
                ok = False
            counts[name] += bool(ok)
            print(f"    {name}: {text.strip()[:80]!r} {'valid' if ok else 'INVALID'}", file=sys.stderr)
    m = min(n, len(JSON_TOPICS))
    return {"task": "json", "n": m, "valid_unconstrained": counts["unconstrained"] / m,
            "valid_constrained": counts["constrained"] / m}
