"""MMLU (Hendrycks et al. 2021) from the items lm-eval ships inside its package.

lm-eval's `tasks/mmlu/flan_cot_fewshot/_cot_prompts.json` holds the 5 dev exemplars of each of
the 57 subjects (question, options, chain-of-thought, answer letter); we parse the question,
options and answer letter and drop the chain of thought. Prompts follow lm-eval's default
`mmlu` template ("...\nA. x\nB. y\nAnswer:" scored against " A", " B", ...). Few-shot
examples are other items of the same subject (never the item itself, nor its duplicate:
college_physics ships one question twice), picked with the seed.
Some items have 5 options; chance is the mean of 1/#options.
"""
from __future__ import annotations

import json
import random
import re

from llmlab.eval.choice import ChoiceMeter
from llmlab.data.packages import package_file

_OPT = re.compile(r"(?:^|\s)\(([A-J])\)\s")


def parse_block(block: str) -> dict | None:
    cut = block.rfind("\nA: ")
    if cut < 0:
        return None
    head, expl = block[:cut], block[cut + 4:]
    marks = list(_OPT.finditer(head))
    starts = [i for i, m in enumerate(marks) if m.group(1) == "A"]
    if not starts:
        return None
    marks = marks[starts[-1]:]
    letters = [m.group(1) for m in marks]
    if letters != [chr(ord("A") + i) for i in range(len(letters))] or len(letters) < 2:
        return None
    options = [head[m.end():(marks[i + 1].start() if i + 1 < len(marks) else len(head))].strip()
               for i, m in enumerate(marks)]
    ans = re.findall(r"answer is \(?([A-J])\)", expl)
    if not ans or ord(ans[-1]) - ord("A") >= len(options):
        return None
    return {"question": head[:marks[0].start()].strip(), "choices": options, "answer": ord(ans[-1]) - ord("A")}


def load_items() -> list[dict]:
    path = package_file("lm_eval", "tasks", "mmlu", "flan_cot_fewshot", "_cot_prompts.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    items = []
    for subject in sorted(data):
        body = data[subject].split("\n\n", 1)[1] if "\n\n" in data[subject] else data[subject]
        for block in re.split(r"(?:^|\n\n)Q: ", body):
            if block.strip():
                it = parse_block(block.strip())
                if it:
                    items.append({"subject": subject, **it})
    return items


def doc_text(it: dict) -> str:
    opts = "".join(f"\n{chr(ord('A') + i)}. {c}" for i, c in enumerate(it["choices"]))
    return f"{it['question'].strip()}{opts}\nAnswer:"


def prompt(it: dict, shots: list[dict]) -> str:
    desc = f"The following are multiple choice questions (with answers) about {it['subject'].replace('_', ' ')}.\n\n"
    ex = "".join(f"{doc_text(s)} {chr(ord('A') + s['answer'])}\n\n" for s in shots)
    return desc + ex + doc_text(it)


class MMLU:
    kind = "multiple_choice"

    def __init__(self, shots: int):
        self.shots = shots
        self.name = f"mmlu_{shots}shot"
        self.version = "1"

    def items(self, limit: int | None, seed: int) -> list[dict]:
        items = load_items()
        by_subject: dict[str, list[dict]] = {}
        for it in items:
            by_subject.setdefault(it["subject"], []).append(it)
        out = []
        for i, it in enumerate(items):
            pool = [s for s in by_subject[it["subject"]] if s["question"] != it["question"]]  # the data has a duplicate
            shots = random.Random(seed * 1_000_003 + i).sample(pool, min(self.shots, len(pool)))
            letters = [chr(ord("A") + j) for j in range(len(it["choices"]))]
            out.append({**it, "prompt": prompt(it, shots), "letters": letters})
        if limit:  # a subject-balanced subset: stride through the subject-sorted list
            step = max(len(out) / limit, 1)
            out = [out[int(k * step)] for k in range(min(limit, len(out)))]
        return out

    def evaluate(self, ctx, items: list[dict]) -> dict:
        pairs = [(it["prompt"], " " + L) for it in items for L in it["letters"]]
        lls = iter(ctx.loglik(pairs))
        meter = ChoiceMeter()
        per_subject: dict[str, list[int]] = {}
        for it in items:
            meter.update([next(lls).logprob for _ in it["letters"]], it["letters"], it["answer"])
            pick, _, gold = meter.per_item[-1]
            per_subject.setdefault(it["subject"], []).append(int(pick == gold))
        subj = {k: sum(v) / len(v) for k, v in sorted(per_subject.items())}
        # acc is micro (per item); acc_macro weighs every subject equally, as MMLU papers do
        return {**meter.result(), "acc_macro": sum(subj.values()) / max(len(subj), 1), "subjects": subj}

    def texts(self, items: list[dict]) -> list[str]:
        return [it["question"] + " " + " ".join(it["choices"]) for it in items]
