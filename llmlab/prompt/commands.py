"""CLI verbs: `llmlab prompt eval` (the results table of docs/prompt.md) and `llmlab prompt json`
(a JSON-schema-constrained completion)."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from llmlab.verb import Verb, verb
from llmlab.errors import UserError, require

VERBS: dict[str, Verb] = {}


@dataclass
class PromptEvalConfig:
    model: str = "smollm2"
    task: str = field(default="arithmetic", metadata={"help": "arithmetic | wiki_cloze | game24 | json"})
    methods: list[str] = field(default_factory=lambda: ["kshot"], metadata={
        "help": "arithmetic: kshot,cot_zero,cot_few,auto_cot,self_consistency,least_to_most; "
                "game24: direct,best_of_5,got_3,tot_bfs,tot_bfs_vote,tot_dfs"})
    n: int = 30
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    k: list[int] = field(default_factory=lambda: [0, 4])
    selections: list[str] = field(default_factory=lambda: ["random", "nearest", "bm25", "mmr"])
    orders: list[str] = field(default_factory=lambda: ["selected"])
    out: str = field(default="", metadata={"help": "append result rows (JSONL) here"})


@dataclass
class PromptJsonConfig:
    model: str = "smollm2"
    prompt: str = field(default="", metadata={"help": "the request (required)"})
    schema: str = field(default="", metadata={"help": "JSON schema (inline JSON or a .json file); empty = any JSON"})
    regex: str = field(default="", metadata={"help": "instead of a schema: a regular expression"})
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0


@verb(VERBS, "prompt eval", PromptEvalConfig)
def run_eval(cfg: PromptEvalConfig) -> int:
    """accuracy and tokens per prompting method on held-out items

    Example: llmlab prompt eval task=arithmetic methods=kshot,cot_zero n=30 k=0,4 seeds=0,1,2
    """
    from llmlab.prompt import evaluate as ev
    from llmlab.prompt.llm import LocalLLM
    if cfg.task not in ("arithmetic", "wiki_cloze", "game24", "json"):
        raise UserError(f"task: unknown '{cfg.task}'; known: arithmetic, wiki_cloze, game24, json")
    llm = LocalLLM.load(cfg.model)
    if cfg.task == "json":
        print(json.dumps(ev.run_json_validity(llm, cfg.n)))
        return 0
    enc = None
    out = open(cfg.out, "a", encoding="utf-8") if cfg.out else None
    for seed in cfg.seeds:
        runs = []
        if cfg.task == "game24":
            runs = [lambda m=m: ev.run_game24(llm, m, cfg.n, seed) for m in cfg.methods]
        else:
            if any(s in ("nearest", "mmr") for s in cfg.selections) and enc is None:
                from llmlab.rag.embed import SentenceEncoder
                enc = SentenceEncoder()
            for m in cfg.methods:
                if m == "kshot" or cfg.task == "wiki_cloze":
                    for k in cfg.k:
                        for s in (cfg.selections if k else ["random"]):
                            for o in (cfg.orders if k else ["selected"]):
                                if cfg.task == "wiki_cloze":
                                    runs.append(lambda k=k, s=s: ev.run_cloze(llm, cfg.n, seed, k, s, enc))
                                else:
                                    runs.append(lambda k=k, s=s, o=o: ev.run_arithmetic(llm, "kshot", cfg.n, seed, k, s, o, enc))
                else:
                    runs.append(lambda m=m: ev.run_arithmetic(llm, m, cfg.n, seed))
        for run in runs:
            row = run()
            print(json.dumps(row), flush=True)
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
    return 0


@verb(VERBS, "prompt json", PromptJsonConfig)
def run_json(cfg: PromptJsonConfig) -> int:
    """generate JSON that always fits a schema (or a regex)

    Example: llmlab prompt json prompt="Describe Paris" schema='{"type":"object","properties":{"city":{"type":"string"}}}'
    """
    from pathlib import Path

    from llmlab.infer.constrained import Constraint, generate_constrained, schema_to_regex
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    require(cfg.prompt, 'prompt is empty: pass prompt="..."')
    pattern = cfg.regex
    if not pattern and cfg.schema:
        text = Path(cfg.schema).read_text() if cfg.schema.endswith(".json") and Path(cfg.schema).is_file() else cfg.schema
        try:
            pattern = schema_to_regex(json.loads(text))
        except json.JSONDecodeError as e:
            raise UserError(f"schema: invalid JSON ({e.msg})") from None
    model, tok = load_model_and_tokenizer(cfg.model)
    c = Constraint(pattern, tok) if pattern else Constraint.json_mode(tok)
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": cfg.prompt}], add_generation_prompt=True))
    sys.stdout.write(generate_constrained(model, tok, ids, c, cfg.max_new_tokens, cfg.temperature, cfg.seed) + "\n")
    return 0
