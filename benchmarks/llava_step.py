"""Where does a `llmlab mm llava` training step spend its time? Times stage-1 and stage-2 steps
of the real recipe (same model, batch and data as `llmlab mm llava`) and prints torch.profiler's
top operators for one step of each stage, plus the batch's token counts (padding included).

    python benchmarks/llava_step.py --vision_run runs/ev_clip3000 --steps 3
    python benchmarks/llava_step.py --vision_run runs/ev_clip3000 --steps 3 --profile
    python benchmarks/llava_step.py --vision_run runs/ev_clip3000 --steps 3 --no_share_prefix  # the old path

Last line: one JSON object (CPU seconds per step per stage, tokens per step in the rows and as run
(the shared chat prefix once per batch), padding share).
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vision_run", required=True)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per stage (after one warm-up step)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lora_r", type=int, default=32)
    ap.add_argument("--no_share_prefix", action="store_true", help="run every row's chat prefix (the old path)")
    ap.add_argument("--stages", default="stage1,stage2", help="which stages to time")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top operators per stage")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from llmlab.finetune.lora import LoraConfig, apply_lora
    from llmlab.multimodal import data as mmdata
    from llmlab.multimodal.llava_train import CAPTION_PROMPT, LlavaConfig, _vqa_examples, build
    cfg = LlavaConfig(vision_run=a.vision_run, per_device_train_batch_size=a.batch, lora_r=a.lora_r)
    model, size = build(cfg)
    model.share_prefix = model.share_prefix and not a.no_share_prefix
    train = mmdata.easy_vqa("train", size=size)
    rng = random.Random(0)
    out = {}
    caps = [(i, CAPTION_PROMPT, c) for i, c in enumerate(train.captions)]
    for stage, examples in (("stage1", caps), ("stage2", _vqa_examples(train))):
        if stage not in a.stages.split(","):
            continue
        if stage == "stage2" and a.lora_r:
            apply_lora(model.lm, LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
        times, toks, real, run = [], 0, 0, 0

        def step():
            batch = [examples[rng.randrange(len(examples))] for _ in range(a.batch)]
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
            real += sum(plen) + sum(len(model.tok.encode(b[2])) + 1 for b in batch)
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
    out["share_prefix"] = model.share_prefix
    print(json.dumps(out))


if __name__ == "__main__":
    main()
