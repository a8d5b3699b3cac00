"""The speedrun report: report.md, summary.json and PNG plots in the run directory."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def _plots(out: Path, summary: dict) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    stages = summary["stages"]
    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(stages)
    ax.barh(names, [stages[n]["seconds"] for n in names], color="#4c72b0")
    ax.set_xlabel("seconds")
    ax.set_title("time per stage")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "stage_times.png", dpi=110)
    plt.close(fig)
    made.append("stage_times.png")

    evals = [e for e in summary.get("evals", []) if e.get("val_bpb") is not None]
    if evals:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot([e["step"] for e in evals], [e["val_bpb"] for e in evals], marker="o")
        ax.set_xlabel("step")
        ax.set_ylabel("val bits per byte")
        ax.set_title("validation bits-per-byte")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "val_bpb.png", dpi=110)
        plt.close(fig)
        made.append("val_bpb.png")

    loss_png = out / "train" / "loss.png"
    if loss_png.is_file():
        shutil.copyfile(loss_png, out / "loss.png")
        made.append("loss.png")
    return made


def write_report(out: Path, summary: dict) -> Path:
    plots = _plots(out, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n",
                                      encoding="utf-8")
    s = summary["stages"]
    pt = s["pretrain"]
    total = sum(v["seconds"] for v in s.values())
    lines = [f"# Speedrun report: {summary['config']['name']}", "",
             f"Total time {total / 60:.1f} min. Preset sizing: {summary['sizing']}; trained "
             f"{pt['steps']} steps ({pt['tokens']:,} tokens).", "",
             "| stage | seconds | what |", "|---|---:|---|",
             f"| data | {s['data']['seconds']:.1f} | {s['data']['train_docs']} train / {s['data']['val_docs']} val "
             f"documents, {s['data']['train_mb']:.1f} MB of training text |",
             f"| tokenizer | {s['tokenizer']['seconds']:.1f} | byte-level BPE, vocab "
             f"{summary['model']['vocab_size']} |",
             f"| shards | {s['shards']['seconds']:.1f} | {s['shards']['train_tokens']:,} train / "
             f"{s['shards']['val_tokens']:,} val tokens, {s['shards']['bytes_per_token']:.2f} bytes/token"
             + (f"; the train tokens include {s['shards']['midtrain_tokens']:,} of templated conversations "
                f"(midtraining, {s['shards']['midtrain_docs']:,} documents)" if s['shards'].get('midtrain_docs') else "")
             + (f" and {s['shards']['fact_tokens']:,} of equation lines ({s['shards']['fact_docs']:,} documents)"
                if s['shards'].get('fact_docs') else "")
             + " |",
             f"| pretrain | {pt['seconds']:.1f} | {pt['steps']} steps, {pt['tokens']:,} tokens, "
             f"{pt['params'] / 1e6:.2f}M params, {pt['tokens'] / max(pt['seconds'], 1e-9):,.0f} tokens/s, "
             f"{'bf16 autocast' if summary.get('train', {}).get('bf16') else 'fp32'} |",
             f"| samples | {s['samples']['seconds']:.1f} | {len(summary['samples'])} sampled completions |",
             *([f"| sft | {s['sft']['seconds']:.1f} | {s['sft']['steps']} steps of full SFT on templated "
                f"instruction data, train loss {s['sft']['train_loss']:.3f}"
                + (f", held-out loss {s['sft']['heldout_loss']:.3f}" if s['sft'].get('heldout_loss') is not None else "")
                + " |"] if "sft" in s else []),
             *([f"| judge | {s['judge']['seconds']:.1f} | SmolLM2-135M judges the samples; held-out instructions |"]
               if "judge" in s else []),
             *([f"| eval | {s['eval']['seconds']:.1f} | report card below (the chat model) |"] if "eval" in s else []),
             "", "## Result", "",
             f"- final training loss: {pt['train_loss']:.3f}",
             f"- validation loss: {pt['val_loss']:.3f} nats/token" if pt.get("val_loss") is not None else "- validation loss: n/a",
             f"- **validation bits-per-byte: {pt['val_bpb']:.3f}**" if pt.get("val_bpb") is not None else "- validation bits-per-byte: n/a",
             "", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in plots]
    if summary.get("judgement"):
        lines += judgement_lines(summary["judgement"])
    card = out / "eval" / "report_card.md"
    if card.is_file():
        lines += ["", "## Report card (`llmlab eval`)", "", card.read_text(encoding="utf-8").strip()]
    lines += ["", "## Samples (temperature 0.8, top-p 0.95)", ""]
    for smp in summary["samples"]:
        lines += [f"**{smp['prompt']}**{smp['completion']}".replace("\n", " ") + "", ""]
    if summary.get("chat_samples"):
        lines += ["## Chat samples (after SFT, greedy)", ""]
        for smp in summary["chat_samples"]:
            lines += [f"- **you>** {smp['prompt']}  ", f"  **assistant>** {smp['reply']}".replace("\n", " "), ""]
    lines += ["## Chat with it", "", "```", f"llmlab chat model={summary['model_dir']}", "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def judgement_lines(j: dict) -> list[str]:
    """The held-out judgement section (llmlab.speedrun.judge)."""
    f, ins, own = j["fluency"], j["instruction"], j["own_split"]
    fmt = lambda d: ", ".join(f"{k} {v}" for k, v in d.items())  # noqa: E731
    lines = ["", "## Held-out judgement", "",
             f"Fluency: SmolLM2-135M-Instruct's perplexity on the pretrained model's continuations of "
             f"{len(f['samples'])} fixed English prompts (fixed seeds; 64 tokens unless quick); distinct-2 = "
             "distinct word bigrams / all bigrams (low = repetitive). The decoding is chosen on validation prompts "
             "(openings of held-out documents, not these prompts): the lowest judge perplexity with distinct-2 >= "
             "0.6 there.", "",
             "| decoding (validation prompts) | judge perplexity | distinct-2 |", "|---|---:|---:|",
             *[f"| {fmt(r['decoding'])}{' (chosen)' if r['decoding'] == f['decoding'] else ''} | "
               f"{r['judge_ppl']:.1f} | {r['distinct_2']:.3f} |" for r in f.get("selection", [])], "",
             "| text | judge perplexity | distinct-2 |", "|---|---:|---:|",
             f"| our samples, chosen decoding ({fmt(f.get('decoding', {}))}) | {f['judge_ppl']:.1f} | "
             f"{f['distinct_2']:.3f} |",
             *([f"| our samples, fixed decoding (temperature 0.8, top-p 0.95) | {f['fixed_judge_ppl']:.1f} | "
                f"{f['fixed_distinct_2']:.3f} |"] if "fixed_judge_ppl" in f else []),
             f"| held-out human text ({f['human_n']} validation docs, same length) | {f['human_judge_ppl']:.1f} | "
             f"{f['human_distinct_2']:.3f} |", "",
             "Instruction following (the chat model, greedy), on questions whose wording (arithmetic, greeting) or "
             "subject (definition, idiom) the SFT data never contains:", "",
             "| kind | n | score | scored by |", "|---|---:|---:|---|"]
    how = {"arithmetic": "exact: last integer of the reply", "greeting": "the reply greets (hello/hi/fine/help...)",
           "definition": "names the subject and defines it (is/was/are/refers to)",
           "idiom": "character F1 vs the dictionary explanation"
                    + (f" (copying the question: {ins['idiom_copy_question_f1']:.3f})"
                       if ins.get("idiom_copy_question_f1") is not None else "")}
    for k, v in ins["scores"].items():
        lines.append(f"| {k} | {ins['n'][k]} | {v:.3f} | {how.get(k, '')} |")
    if ins.get("validation"):
        lines += ["", f"Arithmetic in the validation wordings (the ones SFT settings are chosen on; neither trained "
                      f"on nor in the rows above): {ins['validation']['arithmetic']:.3f} of {ins['validation']['n']}."]
    if ins.get("leaked") is not None:
        lines += ["", f"Held-out questions found verbatim among the {ins['train_conversations']:,} training "
                      f"conversations (midtraining + SFT): {len(ins['leaked'])}."]
    lines += ["", "<details><summary>every held-out question and reply</summary>", ""]
    for it in ins["items"]:
        lines.append(f"- [{it['kind']}, {it['score']:.2f}] {it['prompt']} -> {it['reply']}".replace("\n", " "))
    lines += ["", "</details>", "",
              f"Bits per byte on the run's own validation split: {own['docs']} documents "
              f"({own['dropped_overlap']} of {own['val_docs']} dropped for sharing a 13-gram with the training "
              f"text; contamination of the scored set "
              f"{100 * own['contamination']['contaminated_frac']:.1f}%), {own['bytes']:,} bytes.", "",
              "| model | bits/byte |", "|---|---:|"]
    lines += [f"| {k} | {own[k]:.3f} |" for k in ("pretrained", "chat") if k in own]
    return lines
