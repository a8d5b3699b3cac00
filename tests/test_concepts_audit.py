"""docs/concepts.md names modules, tests and docs sections: each one must exist, so the audit table
of issue 27 (technique -> module -> test -> docs) cannot go stale silently."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")


def audit_rows() -> list[list[str]]:
    """The audit table's rows, split into cells (rows start with the item number)."""
    section = PAGE.split("## Where each technique of the notes' remainder lives", 1)[1]
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if re.match(r"\| \d+ \|", line)]


def headings(doc: str) -> list[str]:
    return [ln.lstrip("#").strip() for ln in (ROOT / doc).read_text(encoding="utf-8").splitlines()
            if ln.startswith("#")]


def test_audit_table_covers_every_item_but_seven():
    items = {int(r[0]) for r in audit_rows()}
    assert items == set(range(1, 11)) - {7}
    assert len(audit_rows()) >= 45 and all(len(r) == 6 for r in audit_rows())


def test_audit_rows_name_existing_modules_tests_and_sections():
    missing = []
    for item, technique, module, test, docs, _ in audit_rows():
        path = module.strip("`")
        if not (ROOT / path).is_file():
            missing.append(f"{technique}: module {path}")
        m = re.match(r"`(tests/[\w/]+\.py)::(\w+)`", test)
        if not m:
            missing.append(f"{technique}: test cell {test!r}")
        elif not (ROOT / m[1]).is_file() or not re.search(rf"^def {m[2]}\(", (ROOT / m[1]).read_text(), re.M):
            missing.append(f"{technique}: test {m[1]}::{m[2]}")
        d = re.match(r'(docs/\w+\.md) § "(.+)"', docs)
        if not d or not any(d[2] in h for h in headings(d[1])):
            missing.append(f"{technique}: docs {docs!r}")
    assert not missing, missing


def test_concepts_page_links_existing_modules():
    """Every `llmlab/...` or `benchmarks/...` path the page names is a file (or package) in the repo."""
    paths = set(re.findall(r"(?<![\w/])((?:llmlab|benchmarks|tests)/[\w/]+(?:\.py)?)", PAGE))
    assert len(paths) > 40
    gone = [p for p in sorted(paths) if not (ROOT / p).exists() and not (ROOT / (p + ".py")).exists()]
    assert not gone, gone
