"""Logging and metrics: a console logger and an append-only JSONL metrics writer."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted, not the stream current when the
    logger was made: a caller that redirects or captures stderr (pytest, a notebook, contextlib)
    and later closes it would otherwise leave every llmlab logger writing to a closed file."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ / setStream assign it; the property wins
        pass


def get_logger(name: str = "llmlab") -> logging.Logger:
    logger = logging.getLogger(name)
    if not logger.handlers:
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(h)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class MetricsWriter:
    """Appends one JSON object per line; flushes every write so a kill loses nothing logged."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, **record) -> None:
        record.setdefault("time", time.time())
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()
