"""Instruction tuning and parameter-efficient fine-tuning (PEFT), each method from scratch.

targets.py   module-name patterns (PEFT `target_modules` semantics)
lora.py      LoRA (Hu et al. 2021): W0 x + (alpha/r) B A x, merge/unmerge
nf4.py       4-bit NormalFloat + double quantization (Dettmers et al. 2023)
qlora.py     QLoRA: a frozen NF4 base Linear with LoRA on top
adapter.py   bottleneck adapters (Houlsby et al. 2019)
prefix.py    prefix tuning (Li & Liang 2021) and P-tuning v2 deep prompts (Liu et al. 2022)
prompt.py    prompt tuning (Lester et al. 2021) and P-tuning v1 (Liu et al. 2021)
io.py        saving/loading only the adapter weights, strict key and base-model checks
peft_format.py  LoRA in the HF `peft` on-disk format (both directions)
methods.py   attach / save_peft / load_peft: one entry point for every method
commands.py  CLI verbs `llmlab sft`, `llmlab peft <method>`, `sft data`, `sft self_instruct`, `peft params`, `merge`
jsonl.py     reading/validating TRL-style JSONL (`messages` or `prompt`/`completion`)
instruct/    instruction data (imports nothing from the SFT modules): builders.py (templated
             and seeded builders, held-out splits), self_instruct.py (Self-Instruct, Wang et al.
             2023: a model writes new instructions + answers). datasets.py / self_instruct.py
             here are the old names, re-exporting them.
sft_config.py     SftConfig: the shared TrainingBase knobs with SFT defaults (HF/TRL names)
sft_data.py       records -> assistant-only labels -> rows (padded or packed) -> resumable batches; replay
packing.py        first-fit-decreasing packing, per-example causal mask
sft_build.py      the model (+ PEFT method) and data an SftConfig asks for
sft_state.py      atomic, verified SFT checkpoints (on llmlab.train.train_state)
sft.py            the SFT loop, exports, run_sft (CLI and speedrun)
sft_eval.py       held-out arithmetic exact match and idiom ROUGE-L by greedy generation
"""
