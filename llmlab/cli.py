"""`llmlab <verb> [config.yaml] [key=value ...]`: one verb-first CLI for every stage."""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import pkgutil
import sys
import typing

from llmlab.verb import Verb
from llmlab.config import load_config
from llmlab.errors import UserError

def all_verbs() -> dict[str, Verb]:
    """Every stage's verbs: each `llmlab/<stage>/commands.py` declares `VERBS` (found, not listed)."""
    import llmlab

    verbs: dict[str, Verb] = {}
    for stage in sorted(m.name for m in pkgutil.iter_modules(llmlab.__path__) if m.ispkg):
        name = f"llmlab.{stage}.commands"
        if importlib.util.find_spec(name) is None:
            continue
        verbs.update(importlib.import_module(name).VERBS)
    return verbs


def _type_name(tp) -> str:
    s = getattr(tp, "__name__", None) if typing.get_origin(tp) is None else None
    return s or str(tp).replace("typing.", "")


def _key_lines(cls, indent: str = "  ", prefix: str = "", defaults=None) -> list[str]:
    """One line per config key; a nested section (a dataclass) lists its own keys under it."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name.startswith("_") or f.metadata.get("hidden"):
            continue
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        doc = f.metadata.get("help", "")
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            lines.append(f"{indent}{prefix}{f.name}:" + (f"  # {doc}" if doc else ""))
            lines += _key_lines(type(default), indent + "  ", "", default)
            continue
        lines.append(f"{indent}{prefix}{f.name}: {_type_name(hints[f.name])} = {default!r}" + (f"  # {doc}" if doc else ""))
    return lines


def verb_help(name: str, verb: Verb) -> str:
    lines = [f"usage: llmlab {name} [config.yaml] [key=value ...]", "", verb.summary, "",
             f"example:\n  {verb.example}", "", "config keys (default):"]
    renamed = [f"  {old}: deprecated old name of {new} (removed in the next release)"
               for old, new in getattr(verb.config, "RENAMED", {}).items()]
    return "\n".join(lines + _key_lines(verb.config) + (["", "deprecated keys:"] + renamed if renamed else []))


def group_help(group: str, verbs: dict[str, Verb]) -> str:
    """`llmlab peft --help`: the sub-verbs of a two-word verb group."""
    subs = sorted(v for v in verbs if v.startswith(group + " "))
    width = max(map(len, subs))
    return "\n".join([f"usage: llmlab {group} <sub-verb> [config.yaml] [key=value ...]   "
                      f"(llmlab {group} <sub-verb> --help for details)", ""] +
                     [f"  {v:<{width}}  {verbs[v].summary}" for v in subs])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        verbs = all_verbs()
        if not argv or argv[0] in ("-h", "--help", "help"):
            print("usage: llmlab <verb> [config.yaml] [key=value ...]   (llmlab <verb> --help for details)\n")
            width = max(map(len, verbs)) if verbs else 8
            for name, v in sorted(verbs.items()):
                print(f"  {name:<{width}}  {v.summary}")
            return 0
        # verbs may be two words ("tokenizer train"): take the longest match
        if len(argv) > 1 and f"{argv[0]} {argv[1]}" in verbs:
            name, rest = f"{argv[0]} {argv[1]}", argv[2:]
        elif argv[0] in verbs:
            name, rest = argv[0], argv[1:]
        elif any(v.startswith(argv[0] + " ") for v in verbs) and (len(argv) == 1 or argv[1] in ("-h", "--help", "help")):
            print(group_help(argv[0], verbs))
            return 0
        else:
            subs = sorted(v for v in verbs if v.startswith(argv[0] + " "))
            hint = f"; did you mean one of: {', '.join(subs)}" if subs else "; run 'llmlab --help' for the list"
            raise UserError(f"unknown verb '{' '.join(argv[:2]) if subs and len(argv) > 1 else argv[0]}'{hint}")
        verb = verbs[name]
        if any(a in ("-h", "--help") for a in rest):
            print(verb_help(name, verb))
            return 0
        cfg = load_config(verb.config, rest)
        rc = verb.run(cfg)
        return int(rc or 0)
    except UserError as e:
        print(f"llmlab: error: {e}", file=sys.stderr)
        return 2
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        if not e.filename:  # not about a path the user can fix
            raise
        why = "permission denied" if isinstance(e, PermissionError) else "a file where a folder is needed, or the reverse"
        print(f"llmlab: error: cannot use {e.filename}: {why} ({e.strerror})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nllmlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `llmlab x --help | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
