"""Document loaders: plain text, Markdown, HTML and JSONL, from files or folders.

Every file becomes one or more `Document`s (a JSONL file: one per record with a `text` field).
Files that cannot be read -- binary (a NUL byte or invalid UTF-8), unknown suffix, bad JSON, no
text -- are skipped and listed in `LoadResult.skipped` with the reason, never fatal.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from llmlab.errors import UserError

SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
            ".html": "html", ".htm": "html", ".jsonl": "jsonl"}


@dataclass
class Document:
    source: str  # file path (plus '#line' for a JSONL record): the unit of update/delete
    text: str
    title: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


class _HTMLText(HTMLParser):
    _SKIP = {"script", "style", "noscript", "template", "head"}
    _BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
              "pre", "blockquote", "table", "ul", "ol", "hr", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.title, self._skip, self._in_title = [], "", 0, False

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP and tag != "head":
            self._skip += 1
        self._in_title = tag == "title"
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self._SKIP and tag != "head":
            self._skip = max(0, self._skip - 1)
        if tag == "title":
            self._in_title = False
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self._in_title:
            self.title += data
            return
        if not self._skip:
            self.parts.append(data)


def html_to_text(source: str) -> tuple[str, str]:
    """(title, visible text) of an HTML page: scripts/styles dropped, blocks become line breaks."""
    p = _HTMLText()
    p.feed(source)
    p.close()
    text = re.sub(r"[ \t\r\f\v]+", " ", "".join(p.parts))
    text = re.sub(r"\n\s*\n+", "\n\n", "\n".join(line.strip() for line in text.split("\n")))
    return html.unescape(p.title).strip(), text.strip()


_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def markdown_to_text(source: str) -> tuple[str, str]:
    """(first heading, text) of Markdown: links keep their label, emphasis/heading marks go, code stays."""
    title = ""
    lines = []
    for line in source.splitlines():
        m = re.match(r"^\s{0,3}(#{1,6})\s+(.*)$", line)
        if m:
            line = m.group(2).rstrip("# ").strip()
            title = title or line
        line = _MD_LINK.sub(r"\1", line)
        line = re.sub(r"(\*\*|__|`)(.+?)\1", r"\2", line)
        lines.append(line)
    return title, "\n".join(lines).strip()


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise ValueError("binary file (NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {e.start})") from None


def load_file(path: Path, result: LoadResult) -> None:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        result.skipped.append((str(path), f"unsupported type '{path.suffix or '(none)'}'"))
        return
    try:
        raw = _read_text(path)
    except (OSError, ValueError) as e:
        result.skipped.append((str(path), str(e)))
        return
    if kind == "jsonl":
        n_before = len(result.documents)
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                result.skipped.append((f"{path}:{n}", f"invalid JSON ({e.msg})"))
                continue
            text = rec.get("text") if isinstance(rec, dict) else None
            if not isinstance(text, str) or not text.strip():
                result.skipped.append((f"{path}:{n}", "no 'text' string field"))
                continue
            src = f"{path}#{rec.get('id', n)}"
            meta = {k: v for k, v in rec.items() if k not in ("text", "title") and isinstance(v, (str, int, float, bool))}
            result.documents.append(Document(src, text.strip(), str(rec.get("title", "")), meta))
        if len(result.documents) == n_before and not any(s[0].startswith(f"{path}:") for s in result.skipped):
            result.skipped.append((str(path), "empty"))
        return
    title, text = {"text": lambda s: ("", s.strip()), "markdown": markdown_to_text, "html": html_to_text}[kind](raw)
    if not text:
        result.skipped.append((str(path), "no text"))
        return
    result.documents.append(Document(str(path), text, title or path.stem))


def load_paths(paths: list[str | Path]) -> LoadResult:
    """Load files and (recursively, sorted) folders; a missing path is a UserError."""
    result = LoadResult()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise UserError(f"no such file or folder: {p}")
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")) if p.is_dir() else [p]
        for f in files:
            load_file(f, result)
    return result
