"""Pipeline report: per-step document counts (in, kept, removed by reason) -> JSON and markdown."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from llmlab.checkpoint import atomic_write_text


class Report:
    def __init__(self) -> None:
        self.steps: dict[str, dict] = {}
        self.order: list[str] = []
        self.per_source: dict[str, Counter] = defaultdict(Counter)
        self.extra: dict = {}

    def step(self, name: str) -> dict:
        if name not in self.steps:
            self.steps[name] = {"in": 0, "kept": 0, "removed": 0, "reasons": Counter(), "chars_in": 0,
                                "chars_kept": 0, "seconds": 0.0}
            self.order.append(name)
        return self.steps[name]

    def record(self, name: str, text: str, kept: bool, reason: str | None = None,
               out_text: str | None = None, seconds: float = 0.0) -> None:
        s = self.step(name)
        s["in"] += 1
        s["chars_in"] += len(text)
        s["seconds"] += seconds
        if kept:
            s["kept"] += 1
            s["chars_kept"] += len(out_text if out_text is not None else text)
        else:
            s["removed"] += 1
            s["reasons"][reason or name] += 1

    def to_dict(self) -> dict:
        steps = []
        for n in self.order:
            s = dict(self.steps[n])
            s["reasons"] = dict(s["reasons"].most_common())
            s["seconds"] = round(s["seconds"], 3)
            steps.append({"step": n, **s})
        return {"steps": steps, "per_source": {k: dict(v) for k, v in self.per_source.items()}, **self.extra}

    def to_markdown(self) -> str:
        d = self.to_dict()
        lines = ["# Data build report", "", "| step | in | kept | removed | chars in | chars kept | cpu seconds | reasons |",
                 "|---|---:|---:|---:|---:|---:|---:|---|"]
        for s in d["steps"]:
            reasons = ", ".join(f"{k}: {v}" for k, v in s["reasons"].items())
            lines.append(f"| {s['step']} | {s['in']} | {s['kept']} | {s['removed']} | {s['chars_in']} | "
                         f"{s['chars_kept']} | {s['seconds']} | {reasons} |")
        if d["per_source"]:
            keys = sorted({k for v in d["per_source"].values() for k in v})
            lines += ["", "Per source (documents)", "", "| source | " + " | ".join(keys) + " |",
                      "|---|" + "---:|" * len(keys)]
            for src, v in d["per_source"].items():
                lines.append(f"| {src} | " + " | ".join(str(v.get(k, 0)) for k in keys) + " |")
        for k, v in self.extra.items():
            lines += ["", f"{k}: `{json.dumps(v, ensure_ascii=False)}`"]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        atomic_write_text(out / "report.json", json.dumps(self.to_dict(), indent=2, ensure_ascii=False))
        atomic_write_text(out / "report.md", self.to_markdown())
