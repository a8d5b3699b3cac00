"""Self-Instruct (Wang et al. 2023): a model writes new instructions and answers from a few seed tasks.

The loop, as in the paper (Sec. 2), scaled down:
1. pool = the seed tasks; each round, for every request, sample k in-context instructions from
   the pool (seeds and, once there are some, machine-written ones: the paper uses 6 + 2), list
   them numbered 1..k and let the model continue the list from "k+1." (sampled, temperature
   > 0, a different seed per request); every complete numbered line it writes is a candidate,
   as in the paper's prompt "Task 9: ...";
2. filter the candidate: length in words (CJK characters count as words), no keywords a text
   model cannot act on (image, graph, file, draw, ...; the paper's list), not starting with
   punctuation, not a duplicate after normalisation, and ROUGE-L < 0.7 against *every*
   instruction already in the pool (novelty: the paper's threshold);
3. the model answers each accepted instruction (greedy); empty answers or answers that only
   repeat the instruction are dropped;
4. accepted pairs join the pool (so later prompts show machine-written examples) until `n` pairs
   exist or the round budget is spent.

Our model is an instruction-tuned chat model (SmolLM2-Instruct), so both requests go through its
chat template (the list continuation is pre-filled as the start of the assistant's reply: asked
"write one new instruction" instead, SmolLM2-135M mostly wrote lead-ins such as "To assist
you:"), and the paper's classification-task detection / output-first instance generation are
left out. Generation runs on the inference
engine (`llmlab.infer.engine.Engine`: the prompts of a round are decoded together). Every record
is labelled `provenance: "synthetic"` with the generating model and seed.
"""
from __future__ import annotations

import random
import re
from typing import Callable

from llmlab.errors import UserError
from llmlab.eval.rouge import rouge_l_cjk, zh_tokens

SEED_TASKS = [
    ("Give three tips for staying healthy.", "Eat a balanced diet, exercise regularly, and sleep seven to nine hours."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Rewrite this sentence in the passive voice: The cat chased the mouse.", "The mouse was chased by the cat."),
    ("Translate 'good morning' into Spanish.", "Buenos días."),
    ("Is 17 a prime number? Answer yes or no.", "Yes."),
    ("Summarize in one sentence why the sky is blue.",
     "Air molecules scatter blue sunlight more than red light, so the sky looks blue."),
    ("List four colours of the rainbow.", "Red, orange, green and blue."),
    ("Classify the sentiment of this review as positive or negative: 'The food was cold and bland.'", "Negative."),
    ("Write a haiku about autumn leaves.", "Red leaves drift and fall,\nwhispering to the cold ground,\nsummer says goodbye."),
    ("Explain what a noun is to a child.", "A noun is a word for a person, place or thing, like 'dog' or 'school'."),
    ("What is 15 + 27?", "The answer is 42."),
    ("Suggest a name for a small coffee shop.", "The Daily Grind."),
    ("Give an antonym of 'generous'.", "Stingy."),
    ("用一句话介绍长城。", "长城是中国古代修建的军事防御工程，绵延上万里。"),
    ("“画蛇添足”是什么意思？", "比喻做了多余的事，反而不恰当。"),
    ("把“我喜欢读书”翻译成英文。", "I like reading books."),
]
BAD_WORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
             "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
REQUEST = "Come up with a series of new, diverse tasks for an AI assistant:\n{examples}"
# generate(conversations, temperature, max_new_tokens, seeds, prefill) -> one reply per conversation;
# prefill is text the assistant's reply starts with (the reply returned excludes it)
Generate = Callable[[list[list[dict]], float, int, list[int], str], list[str]]


def normalize(text: str) -> str:
    return " ".join(zh_tokens(text))


def clean_instruction(line: str) -> str:
    """One line without list numbering, a 'Task:'/'Instruction:' label or wrapping quotes."""
    prev = None
    while prev != line:  # "1. 2. Task: ..." -> "..."
        prev, line = line, re.sub(r"^\s*(\d+[.)]\s*|[-*]\s+|((new )?instruction|task)\s*\d*\s*:\s*)", "",
                                  line.strip(), flags=re.I).strip()
    if len(line) > 1 and line[0] in "\"'“" and line[-1] in "\"'”":
        line = line[1:-1].strip()
    return line


def parse_listing(continuation: str) -> list[str]:
    """The items of a numbered list continued after "k+1.": every line that was finished (followed by
    a newline, or ending with sentence punctuation: the last line may have been cut by the token
    budget). The first line is item k+1 itself, whose number is in the prefill."""
    lines = continuation.split("\n")
    out = []
    for i, line in enumerate(lines):
        text = line.strip()
        if not text or (i > 0 and not re.match(r"^\d+[.)]", text)):
            continue
        if i == len(lines) - 1 and not re.search(r"[.?!。？！]$", text):
            continue  # possibly cut off
        out.append(clean_instruction(text))
    return [c for c in out if c]


def reject_reason(instruction: str, pool_norm: set[str], pool: list[str], threshold: float = 0.7,
                  min_words: int = 3, max_words: int = 150) -> str | None:
    """Why a candidate instruction fails the filters (None = keep)."""
    words = zh_tokens(instruction)
    if not min_words <= len(words) <= max_words:
        return "length"
    low = instruction.lower()
    if any(re.search(rf"\b{re.escape(w)}\b", low) for w in BAD_WORDS):
        return "keyword"
    if not (instruction[0].isalnum() or "\u4e00" <= instruction[0] <= "\u9fff"):
        return "punctuation"
    if instruction.endswith((":", "：")):
        return "incomplete"
    if normalize(instruction) in pool_norm:
        return "duplicate"
    if any(rouge_l_cjk(p, instruction) >= threshold for p in pool):
        return "similar"
    return None


def self_instruct(generate: Generate, n: int, seed: int = 0, seeds: list[tuple[str, str]] | None = None,
                  per_round: int = 8, max_rounds: int = 10, k: int = 8, threshold: float = 0.7,
                  source: str = "", progress: bool = True) -> tuple[list[dict], dict]:
    """Up to n new (instruction, answer) records -> (records, stats); see `Generate` for `generate`.
    stats: requests (prompts), candidates (parsed lines), rejected (by reason), accepted."""
    from tqdm.auto import tqdm

    seeds = list(seeds or SEED_TASKS)
    if len(seeds) < 2:
        raise UserError("self-instruct needs at least 2 seed tasks")
    rng = random.Random(seed)
    pool = [s for s, _ in seeds]
    pool_norm = {normalize(s) for s in pool}
    machine: list[str] = []
    out: list[dict] = []
    stats = {"requests": 0, "accepted": 0, "rejected": {}}
    bar = tqdm(total=n, desc="self-instruct", disable=not progress, leave=False)
    for rnd in range(max_rounds):
        if len(out) >= n:
            break
        convs = []
        m = min(2, len(machine))  # paper: 6 seed + 2 machine-written examples
        shown_n = min(k - m, len(seeds)) + m
        for _ in range(per_round):
            shown = rng.sample(seeds, shown_n - m)
            ex = [s for s, _ in shown] + rng.sample(machine, m)
            rng.shuffle(ex)
            listing = "\n".join(f"{i + 1}. {e}" for i, e in enumerate(ex))
            convs.append([{"role": "user", "content": REQUEST.format(examples=listing)}])
        stats["requests"] += len(convs)
        seeds_ = [seed * 100_003 + rnd * 1000 + i for i in range(len(convs))]
        replies = generate(convs, 0.7, 64, seeds_, f"{shown_n + 1}.")
        cands = [c for r in replies for c in parse_listing(r)]
        stats["candidates"] = stats.get("candidates", 0) + len(cands)
        kept = []
        for c in cands:
            if len(kept) >= n - len(out):
                break  # enough candidates to finish: answer no more than needed
            why = reject_reason(c, pool_norm, pool, threshold) if c else "empty"
            if why:
                stats["rejected"][why] = stats["rejected"].get(why, 0) + 1
                continue
            kept.append(c)
            pool.append(c)
            pool_norm.add(normalize(c))
        if not kept:
            continue
        answers = generate([[{"role": "user", "content": c}] for c in kept], 0.0, 128, [0] * len(kept), "")
        for c, a in zip(kept, answers):
            a = a.strip()
            if not a or normalize(a) == normalize(c):
                stats["rejected"]["answer"] = stats["rejected"].get("answer", 0) + 1
                continue
            machine.append(c)
            out.append({"messages": [{"role": "user", "content": c}, {"role": "assistant", "content": a}],
                        "provenance": "synthetic", "method": "self-instruct",
                        "source": f"self-instruct: {source or 'model'} (seed={seed}, round={rnd})"})
            bar.update(1)
    bar.close()
    stats["accepted"] = len(out)
    return out, stats


def engine_generator(model, tok, max_num_seqs: int = 16) -> Generate:
    """`generate` for self_instruct on the continuous-batching engine (chat template applied)."""
    from llmlab.infer.engine import Engine
    from llmlab.infer.sampling import SamplingParams
    from llmlab.tokenizer.chat import end_of_turn

    engine = Engine(model, tok, max_num_seqs=max_num_seqs)
    eot = end_of_turn(tok)
    stop = tuple(i for i in {tok.special.get(eot) if eot else None, tok.eos_id} if i is not None)

    def generate(convs: list[list[dict]], temperature: float, max_new_tokens: int, seeds: list[int],
                 prefill: str = "") -> list[str]:
        prompts = [tok.encode(tok.apply_chat_template(c, add_generation_prompt=True) + prefill) for c in convs]
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > engine.ctx:
            raise UserError(f"self-instruct: a prompt of {longest} tokens + {max_new_tokens} new ones does not fit "
                            f"the model's context window ({engine.ctx}); use fewer in-context examples (k)")
        params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_p=0.95 if temperature > 0 else 1.0, seed=s, stop_token_ids=stop) for s in seeds]
        return [tok.decode(o[0], skip_special=True) for o in engine.generate(prompts, params)]

    return generate


def from_model(model: str = "smollm2", n: int = 50, seed: int = 0, max_rounds: int = 10, per_round: int = 8,
                  threshold: float = 0.7, progress: bool = True) -> tuple[list[dict], dict]:
    """Self-Instruct records generated by `model` (packaged name, .gguf or HF dir) on the inference
    engine, filtered for novelty (ROUGE-L < threshold vs the pool), length and duplicates."""
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer

    m, tok = load_model_and_tokenizer(model)
    return self_instruct(engine_generator(m.eval(), tok), n, seed, per_round=per_round, max_rounds=max_rounds,
               threshold=threshold, source=model, progress=progress)
