"""`llmlab mm llava`: the two-stage LLaVA recipe on easy-vqa with a CLIP-pretrained ViT and SmolLM2.

Stage 1 trains the projector alone on captions; stage 2 trains the projector and LoRA adapters
(lora_r > 0) on the easy-vqa training questions. Evaluation: open-ended greedy answers on a fixed
seeded sample of questions, exact match: with `validation=N` on the last N training images only
(choose settings there; the test split is then read only with `score_test=true` or afterwards by
`llmlab mm eval run_dir=<run>`), without it on the easy-vqa *test* questions (test images never
seen in training).
"""
from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from llmlab.errors import UserError

CAPTION_PROMPT = "describe the image."


@dataclass
class LlavaConfig:
    lm: str = field(default="smollm2", metadata={"help": "the language model: smollm2, a .gguf or an HF dir"})
    vision_run: str = field(default="runs/mm_clip_easyvqa",
                            metadata={"help": "a `llmlab mm train dataset=easy_vqa` run: its ViT is the frozen encoder"})
    output_dir: str = field(default="runs/mm_llava", metadata={"help": "projector + LoRA weights and metrics"})
    stage1_steps: int = field(default=60, metadata={"help": "projector-only steps on captions"})
    stage2_steps: int = field(default=200, metadata={"help": "projector (+LoRA) steps on VQA turns"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "examples per step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate (projector and LoRA)"})
    lr_schedule: str = field(default="constant", metadata={
        "help": "constant, or cosine: LLaVA-1.5's schedule in each stage (linear warm-up over 3% of the "
                "stage's steps, cosine decay to 0; the peak is each group's learning rate)"})
    pack_turns: int = field(default=1, metadata={
        "help": "stage 2: up to N of an image's training questions per row as one multi-turn conversation "
                "(LLaVA-1.5's packing: the image encoded once, loss on every answer); 1: one question per row"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank on q_proj/v_proj in stage 2 (0: projector only)"})
    train_vision: bool = field(default=False, metadata={
        "help": "stage 2 also fine-tunes the vision encoder (saved to vision.safetensors in the run)"})
    vision_feature_layer: int = field(default=-1, metadata={
        "help": "encoder layer whose patch tokens feed the projector: -1 the final (normed) output, -2 the "
                "penultimate block's (LLaVA-1.5), 0 the patch embeddings"})
    vision_learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the encoder"})
    validation: int = field(default=0, metadata={
        "help": "hold out the last N training images: never trained on, scored as vqa_val_acc (choose settings here)"})
    score_test: bool = field(default=False, metadata={
        "help": "with validation=N also score the test split in this run (off: choosing on validation cannot "
                "peek; score the chosen run later with `llmlab mm eval run_dir=<run>`)"})
    eval_limit: int = field(default=300, metadata={"help": "easy-vqa questions scored (fixed seeded sample)"})
    seed: int = field(default=0, metadata={"help": "projector init, batches, eval sample"})


def build(cfg: LlavaConfig):
    from llmlab.infer.model_and_tokenizer import load_model_and_tokenizer
    from llmlab.multimodal.runs import load_contrastive
    from llmlab.multimodal.llava import Llava
    if not (Path(cfg.vision_run) / "config.json").is_file():
        raise UserError(f"vision_run '{cfg.vision_run}' is not a `llmlab mm train` run; make one with "
                        "`llmlab mm train configs/mm_clip_easyvqa.yaml`")
    clip, vcfg = load_contrastive(cfg.vision_run)
    if vcfg.dataset != "easy_vqa":
        raise UserError(f"vision_run was trained on {vcfg.dataset}; the LLaVA recipe needs an easy_vqa encoder")
    depth = vcfg.vision.depth
    if not -depth - 1 <= cfg.vision_feature_layer <= depth:
        raise UserError(f"vision_feature_layer={cfg.vision_feature_layer} is outside -{depth + 1}..{depth} for "
                        f"the {depth}-block encoder of {cfg.vision_run}")
    lm, tok = load_model_and_tokenizer(cfg.lm, device="cpu", dtype="float32")
    for p in lm.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    return Llava(clip.visual, lm, tok, cfg.vision_feature_layer), vcfg.vision.image_size


def _vqa_examples(ds) -> list[tuple[int, str, str]]:
    return [(i, q, a) for i, qa in enumerate(ds.qa) for q, a in qa]


def _packed(ds, turns: int):
    """A row sampler for `pack_turns`: draws a training question as one-question rows do (uniform over
    questions), then up to turns-1 other questions of the same image, all in a random order:
    (image index, questions, answers). With turns=1 it draws exactly what the plain sampler draws."""
    ex = [(i, j) for i, qa in enumerate(ds.qa) for j in range(len(qa))]

    def draw(rng: random.Random):
        i, j = ex[rng.randrange(len(ex))]
        if turns == 1:
            return i, ds.qa[i][j][0], ds.qa[i][j][1]
        others = [k for k in range(len(ds.qa[i])) if k != j]
        pick = [j] + rng.sample(others, min(turns - 1, len(others)))
        rng.shuffle(pick)
        return i, tuple(ds.qa[i][k][0] for k in pick), tuple(ds.qa[i][k][1] for k in pick)
    return draw


def _steps(model, params, examples, images, steps, cfg, rng, stage: str) -> list[float]:
    """`params`: tensors, or AdamW param groups (dicts) with their own learning rates. `examples`: a
    list of (image index, question, answer) drawn uniformly, or a function of the rng that draws one."""
    from llmlab.multimodal.train import lr_at
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    peaks, warmup = [g["lr"] for g in opt.param_groups], max(1, round(0.03 * steps))
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        if cfg.lr_schedule == "cosine":
            for g, peak in zip(opt.param_groups, peaks):
                g["lr"] = lr_at(step, peak, warmup, steps)
        batch = [examples(rng) if callable(examples) else examples[rng.randrange(len(examples))]
                 for _ in range(cfg.per_device_train_batch_size)]
        idx = torch.tensor([b[0] for b in batch])
        loss = model.loss(images[idx], [b[1] for b in batch], [b[2] for b in batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            print(f"{stage} step {step + 1}/{steps} loss {sum(losses[-10:]) / len(losses[-10:]):.4f} "
                  f"{(step + 1) / (time.perf_counter() - t0):.2f} steps/s", file=sys.stderr, flush=True)
    return losses


def answer_type(answer: str) -> str:
    """easy-vqa's three kinds of question, told by the expected answer: colour, shape or yes/no."""
    from llmlab.multimodal.data import EASY_VQA_COLORS, EASY_VQA_SHAPES
    return "color" if answer in EASY_VQA_COLORS else "shape" if answer in EASY_VQA_SHAPES else "yes_no"


def evaluate_vqa(model, test, limit: int, seed: int, batch: int = 16) -> dict:
    """Exact-match accuracy on a fixed seeded sample, overall and per answer type (`acc_color`,
    `acc_shape`, `acc_yes_no`, with their counts) so a run shows which kind of question fails; `yes_share`
    (answered "yes" / yes-no questions) beside `yes_share_true` shows a model collapsed onto one answer."""
    ex = _vqa_examples(test)
    random.Random(seed).shuffle(ex)
    ex = ex[:limit] if limit else ex
    right, seen, said_yes, is_yes = {}, {}, 0, 0
    model.eval()
    for i in range(0, len(ex), batch):
        chunk = ex[i:i + batch]
        got = model.answer(test.images[torch.tensor([c[0] for c in chunk])], [c[1] for c in chunk])
        for g, c in zip(got, chunk):
            kind, g = answer_type(c[2]), g.lower()
            seen[kind] = seen.get(kind, 0) + 1
            right[kind] = right.get(kind, 0) + (g == c[2])
            if kind == "yes_no":
                said_yes, is_yes = said_yes + (g == "yes"), is_yes + (c[2] == "yes")
    out = {"vqa_acc": sum(right.values()) / len(ex), "n": len(ex)}
    for kind in sorted(seen):
        out.update({f"acc_{kind}": round(right[kind] / seen[kind], 4), f"n_{kind}": seen[kind]})
    if seen.get("yes_no"):
        out.update({"yes_share": round(said_yes / seen["yes_no"], 4), "yes_share_true": round(is_yes / seen["yes_no"], 4)})
    return out


def run(cfg: LlavaConfig) -> dict:
    from llmlab.checkpoint import atomic_dir, check_output_dir, save_tensors, write_json
    from llmlab.finetune.lora import LoraConfig, apply_lora, lora_state_dict
    from llmlab.multimodal import data as mmdata
    check_output_dir(cfg.output_dir, names=("projector.safetensors", "lora.safetensors", "vision.safetensors",
                                            "config.json", "metrics.json"))  # before training, not after it
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise UserError(f"lr_schedule={cfg.lr_schedule!r}: use constant or cosine")
    if cfg.pack_turns < 1:
        raise UserError(f"pack_turns={cfg.pack_turns}: at least 1 question per row")
    model, size = build(cfg)
    train, val = mmdata.easy_vqa("train", size=size), None
    if cfg.validation:
        if not 0 < cfg.validation < len(train):
            raise UserError(f"validation={cfg.validation} must be below the {len(train)} training images")
        cut = len(train) - cfg.validation
        val = mmdata.ImageSet(train.images[cut:], train.labels[cut:], train.class_names, train.captions[cut:],
                              train.name, train.qa[cut:])
        train = train.subset(cut)
    rng = random.Random(cfg.seed)
    t0 = time.perf_counter()
    captions = [(i, CAPTION_PROMPT, c) for i, c in enumerate(train.captions)]
    s1 = _steps(model, list(model.projector.parameters()), captions, train.images, cfg.stage1_steps, cfg, rng, "stage1")
    params = list(model.projector.parameters())
    if cfg.lora_r:
        apply_lora(model.lm, LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r))
        params += [p for p in model.lm.parameters() if p.requires_grad]
    groups = [{"params": params}]
    if cfg.train_vision:
        for p in model.vision.parameters():
            p.requires_grad_(True)
        groups.append({"params": list(model.vision.parameters()), "lr": cfg.vision_learning_rate})
    rows = _vqa_examples(train) if cfg.pack_turns == 1 else _packed(train, cfg.pack_turns)
    s2 = _steps(model, groups, rows, train.images, cfg.stage2_steps, cfg, rng, "stage2")
    model.vision.requires_grad_(False)
    train_s = time.perf_counter() - t0
    metrics = {"seed": cfg.seed, "stage1_steps": cfg.stage1_steps, "stage2_steps": cfg.stage2_steps,
               "lora_r": cfg.lora_r, "lr_schedule": cfg.lr_schedule, "pack_turns": cfg.pack_turns, "train_seconds": round(train_s, 1),
               "stage1_final_loss": round(sum(s1[-10:]) / max(1, len(s1[-10:])), 4) if s1 else None,
               "stage2_final_loss": round(sum(s2[-10:]) / max(1, len(s2[-10:])), 4) if s2 else None,
               "train_vision": cfg.train_vision, "validation": cfg.validation}
    if val is not None:
        v = evaluate_vqa(model, val, cfg.eval_limit, cfg.seed)
        metrics.update(vqa_val_acc=v["vqa_acc"], val_n=v["n"],
                       **{f"val_{k}": x for k, x in v.items() if k.startswith(("acc_", "n_", "yes_share"))})
        print(json.dumps(metrics), file=sys.stderr, flush=True)
    if val is None or cfg.score_test:
        metrics.update(evaluate_vqa(model, mmdata.easy_vqa("test", size=size), cfg.eval_limit, cfg.seed))
    with atomic_dir(cfg.output_dir) as d:
        save_tensors(d / "projector.safetensors", model.projector.state_dict())
        if cfg.lora_r:
            save_tensors(d / "lora.safetensors", lora_state_dict(model.lm))
        if cfg.train_vision:
            save_tensors(d / "vision.safetensors", model.vision.state_dict())
        write_json(d / "config.json", {"kind": "llava", **asdict(cfg)})
        write_json(d / "metrics.json", metrics)
    print(json.dumps(metrics))
    return metrics


def load_llava(run_dir: str):
    """A saved `llmlab mm llava` run -> (model ready to answer, image size); strict loading."""
    model, size, _cfg = _load(run_dir)
    return model, size


def evaluate_run(run_dir: str) -> dict:
    """A saved run scored on the easy-vqa test split (its own eval_limit and seed, so the same
    questions as `score_test=true` in the training run): the one read of test for a setting chosen
    on validation."""
    from llmlab.multimodal import data as mmdata
    model, size, cfg = _load(run_dir)
    with torch.no_grad():
        return evaluate_vqa(model, mmdata.easy_vqa("test", size=size), cfg.eval_limit, cfg.seed)


def _load(run_dir: str):
    from llmlab.checkpoint import load_strict, load_tensors, read_json
    from llmlab.config import from_dict
    from llmlab.finetune.lora import LoraConfig, apply_lora
    meta = read_json(Path(run_dir) / "config.json")
    if meta.pop("kind", None) != "llava":
        raise UserError(f"{run_dir}: not a `llmlab mm llava` run (config.json has no kind=llava)")
    cfg = from_dict(LlavaConfig, meta)
    model, size = build(cfg)
    proj = load_tensors(Path(run_dir) / "projector.safetensors")
    for k, v in proj.items():  # one clear line when the vision/LM widths differ from the saved ones
        mine = model.projector.state_dict().get(k)
        if mine is not None and mine.shape != v.shape:
            raise UserError(f"{run_dir}: projector {k} is {tuple(v.shape)} but vision width "
                            f"{model.vision.config.embed_dim} -> LM width {model.lm.config.hidden_size} needs "
                            f"{tuple(mine.shape)}: vision_run or lm differ from the ones it was trained with")
    load_strict(model.projector, proj, str(run_dir))
    if cfg.train_vision:
        load_strict(model.vision, load_tensors(Path(run_dir) / "vision.safetensors"), str(run_dir))
    if cfg.lora_r:
        apply_lora(model.lm, LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r))
        lora = load_tensors(Path(run_dir) / "lora.safetensors")
        missing = set(lora) - set(model.lm.state_dict())
        if missing:
            raise UserError(f"{run_dir}: LoRA weights {sorted(missing)[:3]} do not fit the LM '{cfg.lm}'")
        model.lm.load_state_dict(lora, strict=False)
    return model.eval(), size, cfg
