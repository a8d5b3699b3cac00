"""Where does a `llmlab mm llava` training step spend its time? Times stage-1 and stage-2 steps
of the real recipe (same model, batch and data as `llmlab mm llava`) and prints torch.profiler's
top operators for one step of each stage, plus the batch's token counts (padding included).

    python benchmarks/llava_step.py --vision_run runs/ev_clip3000 --steps 3
    python benchmarks/llava_step.py --vision_run runs/ev_clip3000 --steps 3 --profile
    python benchmarks/llava_step.py --vision_run runs/ev_clip3000 --steps 3 --no_share_prefix  # the old path
    python benchmarks/llava_step.py --vision_run runs/ev_clip3000 --steps 3 --stages stage2 --pack_turns 4
    python benchmarks/llava_step.py --quick   # an untrained encoder of the easy-vqa config, 1 step, both paths

`--pack_turns N` times stage 2 with N of an image's questions per row as one conversation (`llmlab mm llava
pack_turns=N`); `stage2_answers_per_step` counts the supervised answers a step sees.

Last line: one JSON object (CPU seconds per step per stage, tokens per step in the rows and as run
(the shared chat prefix once per batch), padding share). With --quick it is the standard benchmark
line: ours = the shared-prefix step, peer = every row's prefix (the old path), ratio = their CPU
time per step (old / new, higher is better).
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vision_run", help="a `llmlab mm train` run dir (the encoder); required unless --quick")
    ap.add_argument("--quick", action="store_true",
                    help="an untrained encoder (configs/mm_clip_easyvqa.yaml), 1 timed step per stage, both paths")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per stage (after one warm-up step)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lora_r", type=int, default=32)
    ap.add_argument("--pack_turns", type=int, default=1, help="stage 2: questions per row (multi-turn packing)")
    ap.add_argument("--no_share_prefix", action="store_true", help="run every row's chat prefix (the old path)")
    ap.add_argument("--stages", default="stage1,stage2", help="which stages to time")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top operators per stage")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.quick:
        return quick(a)
    if not a.vision_run:
        ap.error("--vision_run is needed (or --quick)")
    print(json.dumps(time_stages(a, share=not a.no_share_prefix)))


def quick(a) -> None:
    """Both paths on an untrained encoder of the easy-vqa config (timing only: the weights don't matter)."""
    import tempfile
    from pathlib import Path

    from llmlab.config import load_config
    from llmlab.multimodal.runs import save_contrastive
    from llmlab.multimodal.train import ContrastiveConfig, build_model
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as d:
        cfg = load_config(ContrastiveConfig, [str(root / "configs" / "mm_clip_easyvqa.yaml")])
        save_contrastive(build_model(cfg), cfg, {}, d)
        a.vision_run, a.steps, a.batch = d, 1, 2
        new, old = time_stages(a, share=True), time_stages(a, share=False)
    ratio = {f"{s}_step_speedup": old[f"{s}_cpu_s_per_step"] / max(new[f"{s}_cpu_s_per_step"], 1e-9)
             for s in a.stages.split(",")}
    print(json.dumps({"benchmark": "llava_step", "ours": new, "peer": old, "ratio": ratio}))


def time_stages(a, share: bool) -> dict:
    """CPU seconds per step of each stage (median of a.steps after one warm-up), tokens and padding."""
    from llmlab.finetune.lora import LoraConfig, apply_lora
    from llmlab.multimodal import data as mmdata
    from llmlab.multimodal.llava_train import CAPTION_PROMPT, LlavaConfig, _packed, build
    cfg = LlavaConfig(vision_run=a.vision_run, per_device_train_batch_size=a.batch, lora_r=a.lora_r)
    model, size = build(cfg)
    model.share_prefix = model.share_prefix and share
    train = mmdata.easy_vqa("train", size=size)
    rng = random.Random(0)
    out = {}
    caps = [(i, CAPTION_PROMPT, c) for i, c in enumerate(train.captions)]

    def draw_caption(r: random.Random):  # what `_steps` draws in stage 1
        return caps[r.randrange(len(caps))]
    for stage, draw in (("stage1", draw_caption), ("stage2", _packed(train, a.pack_turns))):
        if stage not in a.stages.split(","):
            continue
        if stage == "stage2" and a.lora_r:
            apply_lora(model.lm, LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
        times, toks, real, run, answers = [], 0, 0, 0, 0

        def step():
            batch = [draw(rng) for _ in range(a.batch)]
            idx = torch.tensor([b[0] for b in batch])
            loss = model.loss(train.images[idx], [b[1] for b in batch], [b[2] for b in batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return batch

        step()  # warm-up
        for _ in range(a.steps):
            t0 = time.process_time()
            batch = step()
            times.append(time.process_time() - t0)
            x, _y, plen = model._batch(train.images[torch.tensor([b[0] for b in batch])], [b[1] for b in batch],
                                       [b[2] for b in batch])
            toks += x.shape[0] * x.shape[1]
            run += x.shape[0] * x.shape[1] - (x.shape[0] - 1) * len(model._before) * model.share_prefix
            last = [b[2] if isinstance(b[2], str) else b[2][-1] for b in batch]  # plen ends before the last answer
            real += sum(plen) + sum(len(model.tok.encode(t)) + 1 for t in last)
            answers += sum(1 if isinstance(b[2], str) else len(b[2]) for b in batch)
        if a.profile:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            print(f"--- {stage}: one step, top operators by self CPU time")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
        out[f"{stage}_cpu_s_per_step"] = round(sorted(times)[len(times) // 2], 3)
        out[f"{stage}_tokens_per_step"] = toks / a.steps
        out[f"{stage}_padding_share"] = round(1 - real / toks, 3)
        out[f"{stage}_tokens_run_per_step"] = run / a.steps  # the shared prefix counted once per batch
        out[f"{stage}_answers_per_step"] = answers / a.steps
    out["share_prefix"], out["pack_turns"] = model.share_prefix, a.pack_turns
    return out


if __name__ == "__main__":
    main()
