"""CLI verb: `llmlab eval [cfg.yaml] model=smollm2 tasks=mmlu_0shot,arithmetic limit=20`."""
from __future__ import annotations

from dataclasses import dataclass, field

from llmlab.verb import Verb, verb
from llmlab.errors import UserError, require

VERBS: dict[str, Verb] = {}


@dataclass
class EvalConfig:
    model: str = field(default="smollm2", metadata={"help": "packaged name, .gguf file or HF-style dir"})
    tasks: list[str] = field(default_factory=lambda: ["perplexity_en", "mmlu_0shot"],
                             metadata={"help": "task names (`llmlab eval tasks=list`) or .jsonl task files; "
                                                   "name:N overrides limit for that task"})
    limit: int = field(default=0, metadata={"help": "items per task (0: the task's default sample count)"})
    seed: int = field(default=1234, metadata={"help": "seed for sampling items, distractors and few-shot examples"})
    batch_size: int = field(default=16, metadata={"help": "log-likelihood batch size (scores do not depend on it)"})
    max_length: int = field(default=0, metadata={"help": "context window to use (0: the model's)"})
    contamination_corpus: str = field(default="", metadata={"help": "training text file for the n-gram overlap check"})
    ngram: int = field(default=13, metadata={"help": "n-gram length of the contamination check"})
    output_dir: str = field(default="runs/eval", metadata={"help": "where report_card.json/.md go"})
    device: str = "auto"
    dtype: str = "auto"


@verb(VERBS, "eval", EvalConfig)
def run_eval(cfg: EvalConfig) -> int:
    """evaluate a model on packaged tasks; writes a JSON + markdown report card

    Example: llmlab eval model=smollm2 tasks=mmlu_0shot,arithmetic limit=20
    """
    import torch

    from llmlab.checkpoint import check_output_dir
    from llmlab.device import setup_threads
    from llmlab.eval.contamination import NgramIndex
    from llmlab.eval.harness import EvalContext, run_task
    from llmlab.eval.report import make_card, markdown_table, model_hash, write_card
    from llmlab.eval.tasks import get_task, task_names
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    from llmlab.model.load import resolve_model_path

    if cfg.tasks == ["list"]:
        print("\n".join(task_names()))
        return 0
    if cfg.limit < 0 or cfg.batch_size < 1 or cfg.max_length < 0:
        raise UserError(f"limit ({cfg.limit}), batch_size ({cfg.batch_size}) and max_length ({cfg.max_length}) "
                        f"must be >= 0, >= 1, >= 0")
    check_output_dir(cfg.output_dir, names=None)  # eval writes its reports into the folder
    require(cfg.tasks, "tasks is empty: pass tasks=name[,name...] (see `llmlab eval tasks=list`)")
    tasks, limits = [], []
    for spec in cfg.tasks:  # "name" or "name:limit"
        name, _, n = spec.rpartition(":")
        if not name or not n.isdigit():
            name, n = spec, ""
        tasks.append(get_task(name))
        limits.append(int(n) if n else (cfg.limit or None))
    setup_threads()
    model, tok = load_model_and_tokenizer(cfg.model, cfg.device, cfg.dtype)
    path = resolve_model_path(cfg.model)
    model = model.eval()
    index = NgramIndex.from_file(cfg.contamination_corpus, cfg.ngram) if cfg.contamination_corpus else None
    ctx = EvalContext(model, tok, cfg.batch_size, max_length=cfg.max_length or None, seed=cfg.seed)
    results = []
    settings = {"batch_size": cfg.batch_size, "max_length": ctx.window, "limit": cfg.limit,
                "contamination_corpus": cfg.contamination_corpus or None, "dtype": str(next(model.parameters()).dtype)}
    sha = model_hash(path)
    with torch.inference_mode():
        for task, limit in zip(tasks, limits):
            res = run_task(task, ctx, limit, index)
            results.append(res)
            print(f"{task.name}: " + ", ".join(f"{k}={v:.4g}" for k, v in res.items() if isinstance(v, float)),
                  flush=True)
            card = make_card(cfg.model, path, cfg.seed, settings, results, sha)
            jp, mp = write_card(card, cfg.output_dir)  # after every task: a crash keeps what finished
    print(markdown_table(card))
    print(f"report card: {jp} and {mp}")
    return 0


@dataclass
class DecontaminateConfig:
    data: str = field(default="runs/data/train.jsonl", metadata={"help": "training file: JSONL with 'text', or .txt"})
    output: str = field(default="", metadata={"help": "filtered file (default: <data stem>.decontaminated<ext>)"})
    tasks: list[str] = field(default_factory=lambda: ["all"], metadata={"help": "eval tasks or .jsonl files; all = every packaged one"})
    seed: int = field(default=1234, metadata={"help": "the eval seed whose items are protected (llmlab eval's default)"})
    limit: int = field(default=0, metadata={"help": "items per task (0: each task's default count)"})
    ngram: int = field(default=13, metadata={"help": "n-gram length (GPT-3: 13); shorter items match whole"})
    min_words: int = field(default=4, metadata={"help": "items with fewer words are not checked (counted)"})


@verb(VERBS, "decontaminate", DecontaminateConfig)
def run_decontaminate(cfg: DecontaminateConfig) -> int:
    """remove training documents that contain an eval item (n-gram overlap)

    Example: llmlab decontaminate data=runs/data/train.jsonl
    """
    import json
    from pathlib import Path

    from llmlab.eval.contamination import decontaminate_file, packaged_eval_sets
    from llmlab.eval.tasks import get_task

    if cfg.ngram < 1 or cfg.min_words < 1 or cfg.limit < 0:
        raise UserError("ngram and min_words must be >= 1, limit >= 0")
    if cfg.tasks == ["all"]:
        sets = packaged_eval_sets(cfg.seed, cfg.limit)
    else:
        sets = {}
        for name in cfg.tasks:
            task = get_task(name)
            sets[task.name] = list(task.texts(task.items(cfg.limit or None, cfg.seed)))
    src = Path(cfg.data)
    out = Path(cfg.output) if cfg.output else src.with_name(src.stem + ".decontaminated" + src.suffix)
    try:
        counts = decontaminate_file(src, out, sets, cfg.ngram, cfg.min_words)
        Path(str(out) + ".report.json").write_text(json.dumps(counts, indent=1))
    except OSError as e:
        raise UserError(f"decontaminate: cannot write {out} ({e.strerror or e})") from None
    for t, c in counts["per_task"].items():
        print(f"{t:<16} items {c['items']:>5}  found in training data {c['items_found']:>4}  "
              f"documents removed {c['docs_removed']}")
    print(f"kept {counts['kept']} of {counts['documents']} documents -> {out} (report {out}.report.json)")
    return 0
