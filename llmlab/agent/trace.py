"""Every agent step as a JSON line (machine-readable) and, optionally, a readable terminal line."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

_COLORS = {"thought": "\033[36m", "action": "\033[33m", "observation": "\033[32m", "final": "\033[1m",
           "error": "\033[31m", "status": "\033[35m"}


class Tracer:
    def __init__(self, path: str | Path | None = None, echo: bool = False):
        self.f = open(path, "a", encoding="utf-8") if path else None
        self.echo = echo
        self.t0 = time.perf_counter()
        self.events: list[dict] = []

    def log(self, kind: str, content, **extra) -> None:
        ev = {"t": round(time.perf_counter() - self.t0, 3), "type": kind, "content": content, **extra}
        self.events.append(ev)
        if self.f:
            self.f.write(json.dumps(ev, ensure_ascii=False) + "\n")
            self.f.flush()
        if self.echo:
            color = _COLORS.get(kind, "") if sys.stderr.isatty() else ""
            reset = "\033[0m" if color else ""
            text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
            print(f"{color}[{ev['t']:7.2f}s] {kind:<11}{reset} {text}", file=sys.stderr)

    def close(self) -> None:
        if self.f:
            self.f.close()
