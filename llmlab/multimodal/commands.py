"""CLI verbs: `llmlab mm train` (CLIP / SigLIP contrastive training, or the LLaVA-style VQA model)
and `llmlab mm eval` (zero-shot accuracy, retrieval recall@1/5, VQA accuracy on a test split)."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

import torch

from llmlab.errors import UserError, require
from llmlab.verb import Verb, verb
from llmlab.infer.vision import VISION_MODELS
from llmlab.checkpoint import check_output_dir
from llmlab.multimodal.runs import RUN_FILES, load_contrastive, save_contrastive
from llmlab.multimodal.train import ContrastiveConfig

VERBS: dict[str, Verb] = {}


@verb(VERBS, "mm train", ContrastiveConfig)
def run_train(cfg: ContrastiveConfig) -> int:
    """train CLIP (InfoNCE) or SigLIP (sigmoid) image-text encoders on packaged images

    Example: llmlab mm train configs/mm_clip_digits.yaml model=siglip seed=1 output_dir=runs/mm_siglip
    """
    from llmlab.device import setup_threads
    from llmlab.multimodal.train import ContrastiveTrainer, build_model, evaluate_contrastive, load_split
    setup_threads()
    if cfg.model == "llava":
        raise UserError("model=llava trains with `llmlab mm llava` (its own config); here: clip or siglip")
    check_output_dir(cfg.output_dir, names=RUN_FILES)  # before training, not after it
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    model = build_model(cfg)
    trainer = ContrastiveTrainer(model, model.tokenize, train, cfg)
    t0, every = time.perf_counter(), max(1, cfg.max_steps // 10)
    while trainer.step < cfg.max_steps:
        n, secs = trainer.run(min(every, cfg.max_steps - trainer.step))
        print(f"step {trainer.step}/{cfg.max_steps} loss {sum(trainer.losses[-every:]) / len(trainer.losses[-every:]):.4f} "
              f"{n / secs:.0f} img/s", file=sys.stderr, flush=True)
    metrics = {"model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed, "steps": cfg.max_steps,
               "train_seconds": round(time.perf_counter() - t0, 1), "final_loss": round(trainer.losses[-1], 4),
               **{k: round(v, 4) for k, v in evaluate_contrastive(model, model.tokenize, test).items()}}
    save_contrastive(model, cfg, metrics, cfg.output_dir)
    print(json.dumps(metrics))
    return 0


@dataclass
class EvalConfig:
    run_dir: str = field(default="runs/mm_clip", metadata={
        "help": "a `llmlab mm train` output_dir, or a `llmlab mm llava` one (scored on the easy-vqa test questions)"})
    dataset: str = field(default="", metadata={"help": "test split to score on (default: the run's dataset)"})
    choose_prompts: bool = field(default=False, metadata={
        "help": "choose the zero-shot prompt ensemble (a subset of the held-out templates) on the run's validation "
                "images (a run trained with validation=N), then score the test split with it"})
    prompts: str = field(default="heldout", metadata={
        "help": "digits/mnist zero-shot prompts: heldout (4 templates unseen in training) or generic (those plus "
                "12 generic CLIP-style ones, also unseen); a run trained with validation=N is scored on its validation images"})


@verb(VERBS, "mm eval", EvalConfig)
def run_eval(cfg: EvalConfig) -> int:
    """zero-shot accuracy (prompt ensemble) and recall@1/5 on a test split

    Example: llmlab mm eval run_dir=runs/mm_clip
    """
    from pathlib import Path
    from llmlab.checkpoint import read_json
    from llmlab.multimodal.train import evaluate_contrastive, load_split
    meta = Path(cfg.run_dir) / "config.json"
    if meta.is_file() and read_json(meta).get("kind") == "llava":
        from llmlab.multimodal.llava_train import evaluate_run
        print(json.dumps({"run_dir": cfg.run_dir, "split": "test", **evaluate_run(cfg.run_dir)}))
        return 0
    model, tcfg = load_contrastive(cfg.run_dir)
    if cfg.dataset:
        tcfg.dataset = cfg.dataset
    if cfg.choose_prompts:
        print(json.dumps({"run_dir": cfg.run_dir, "dataset": tcfg.dataset, **_chosen_prompts(model, tcfg)}))
        return 0
    with torch.no_grad():
        metrics = evaluate_contrastive(model, model.tokenize, load_split(tcfg, "test"), cfg.prompts)
    print(json.dumps({"run_dir": cfg.run_dir, "dataset": tcfg.dataset, "prompts": cfg.prompts, **{k: round(v, 4) for k, v in metrics.items()}}))
    return 0


def _chosen_prompts(model, tcfg) -> dict:
    """Prompt ensemble chosen on the validation images the run never trained on; test scored once."""
    from dataclasses import replace
    from llmlab.multimodal.evaluate import DIGIT_EVAL_TEMPLATES, SHAPE_EVAL_TEMPLATES, choose_templates, \
        zero_shot_accuracy
    from llmlab.multimodal.train import load_split
    require(tcfg.validation > 0, "choose_prompts=true needs a run trained with validation=N (this one used "
            "the whole training split, so no held-out images are left to choose on)")
    require(tcfg.dataset in ("digits", "mnist", "easy_vqa"), f"zero-shot classes need digits, mnist or easy_vqa, "
            f"not {tcfg.dataset}")
    templates = DIGIT_EVAL_TEMPLATES if tcfg.dataset in ("digits", "mnist") else SHAPE_EVAL_TEMPLATES
    val, test = load_split(tcfg, "test"), load_split(replace(tcfg, validation=0), "test")
    chosen, val_acc = choose_templates(model, model.tokenize, val.images, val.labels, val.class_names, templates)

    def score(t: list[str]) -> float:
        return round(zero_shot_accuracy(model, model.tokenize, test.images, test.labels, test.class_names, t), 4)
    return {"chosen_templates": chosen, "val_zero_shot_acc_chosen": round(val_acc, 4),
            "test_zero_shot_acc_chosen": score(chosen), "test_zero_shot_acc_all": score(templates)}


def _llava_config():
    from llmlab.multimodal.llava_train import LlavaConfig
    return LlavaConfig


@verb(VERBS, "mm llava", _llava_config())
def run_llava(cfg) -> int:
    """LLaVA-style VQA: CLIP ViT -> MLP projector -> SmolLM2 (stage 1 captions, stage 2 VQA + LoRA)

    Example: llmlab mm llava configs/mm_llava.yaml stage2_steps=400 seed=1
    """
    from llmlab.device import setup_threads
    from llmlab.multimodal.llava_train import run
    setup_threads()
    run(cfg)
    return 0


@dataclass
class ChatConfig:
    run_dir: str = field(default="runs/mm_llava", metadata={"help": "a `llmlab mm llava` output_dir"})
    image: str = field(default="", metadata={"help": "image file (png/jpg/...) or a data:image/...;base64 URL"})
    question: str = field(default="", metadata={"help": "ask once and exit; empty: a REPL (/exit or Ctrl-D quits)"})
    max_new_tokens: int = field(default=8, metadata={"help": "answer length limit"})


@verb(VERBS, "mm chat", ChatConfig)
def run_chat(cfg: ChatConfig) -> int:
    """ask a trained LLaVA-style model about a picture (terminal)

    Example: llmlab mm chat run_dir=runs/mm_llava image=shape.png question='what color is the shape?'
      (an easy-vqa test picture: image=$(python -c "import easy_vqa; print(easy_vqa.get_test_image_paths()[0])"))
    """
    from llmlab.infer.commands import image_chat
    from llmlab.multimodal.chat import LlavaChat
    from llmlab.multimodal.image_io import load_image
    require(cfg.image, "config key 'image': give a picture, e.g. image=cat.png")
    load_image(cfg.image, 8)  # a bad image fails in a second, before the LM loads
    return image_chat(LlavaChat(cfg.run_dir), cfg.image, cfg.question, cfg.max_new_tokens)


def _llava_chat(run_dir: str):
    from llmlab.multimodal.chat import LlavaChat
    return LlavaChat(run_dir)


# `llmlab chat` and `llmlab serve` load `llmlab mm llava` runs through this (infer/serve come earlier)
VISION_MODELS.update(llava=_llava_chat)
