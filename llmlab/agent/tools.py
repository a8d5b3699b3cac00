"""Tools for agents: a registry whose JSON schemas come from Python signatures and docstrings.

    @registry.tool
    def calculator(expression: str) -> str:
        '''Evaluate an arithmetic expression.

        Args:
            expression: e.g. "(3 + 4) * 2"
        '''

gives the OpenAI function-calling schema {"name": "calculator", "description": "Evaluate ...",
"parameters": {"type": "object", "properties": {"expression": {"type": "string", "description":
"e.g. ..."}}, "required": ["expression"]}}. Arguments a model sends are validated against it; a call
that fails (unknown tool, missing/extra/mistyped argument, the tool raising) returns an error
*observation* instead of raising, so the agent loop continues and the model can correct itself.
"""
from __future__ import annotations

import inspect
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

_JSON = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def _schema_of(tp) -> dict:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:  # Annotated[str, {"pattern": ...}]: dict metadata adds schema keywords
        extra = {k: v for m in tp.__metadata__ if isinstance(m, dict) for k, v in m.items()}
        return {**_schema_of(tp.__origin__), **extra}
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _schema_of(inner[0]) if len(inner) == 1 else {"anyOf": [_schema_of(a) for a in inner]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, tuple):
        return {"type": "array", "items": _schema_of(args[0])} if args else {"type": "array"}
    if origin is dict:
        return {"type": "object"}
    if tp in _JSON:
        return {"type": _JSON[tp]}
    raise TypeError(f"no JSON schema for parameter type {tp!r}")


def _doc_args(doc: str) -> tuple[str, dict[str, str]]:
    """Summary (text before 'Args:') and per-argument descriptions (Google style)."""
    doc = inspect.cleandoc(doc or "")
    head, _, rest = doc.partition("Args:")
    descs, name = {}, None
    for line in rest.splitlines():
        m = re.match(r"^\s{0,8}(\w+)\s*(?:\([^)]*\))?:\s*(.*)$", line)
        if m and not line.startswith(" " * 9):
            name = m.group(1)
            descs[name] = m.group(2).strip()
        elif name and line.strip():
            descs[name] += " " + line.strip()
        elif not line.strip() and name:
            name = None
    return " ".join(head.split()), descs


@dataclass
class Tool:
    name: str
    fn: Callable
    schema: dict  # {"name", "description", "parameters"}

    @classmethod
    def from_function(cls, fn: Callable, name: str | None = None) -> "Tool":
        hints = typing.get_type_hints(fn, include_extras=True)
        summary, descs = _doc_args(fn.__doc__ or "")
        props, required = {}, []
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.name not in hints:
                raise TypeError(f"tool {fn.__name__}: parameter '{p.name}' needs a type annotation")
            prop = _schema_of(hints[p.name])
            if p.name in descs:
                prop["description"] = descs[p.name]
            if p.default is inspect.Parameter.empty:
                required.append(p.name)
            else:
                prop["default"] = p.default
            props[p.name] = prop
        params = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
        return cls(name or fn.__name__, fn, {"name": name or fn.__name__, "description": summary, "parameters": params})


def _type_ok(value, schema: dict) -> bool:
    if "anyOf" in schema:
        return any(_type_ok(value, s) for s in schema["anyOf"])
    if "enum" in schema:
        return value in schema["enum"]
    t = schema.get("type")
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "array":
        return isinstance(value, list) and all(_type_ok(v, schema.get("items", {})) for v in value)
    checks = {"string": str, "boolean": bool, "object": dict}
    if t == "string" and "pattern" in schema:
        return isinstance(value, str) and re.fullmatch(schema["pattern"], value) is not None
    return t is None or isinstance(value, checks[t])


def validate(args: Any, schema: dict) -> str | None:
    """None if `args` fits the parameters schema, else a one-line reason."""
    if not isinstance(args, dict):
        return f"arguments must be a JSON object, got {type(args).__name__}"
    props = schema["properties"]
    missing = [k for k in schema.get("required", []) if k not in args]
    if missing:
        return f"missing required argument(s): {', '.join(missing)}"
    extra = [k for k in args if k not in props]
    if extra:
        return f"unknown argument(s): {', '.join(extra)}; expected: {', '.join(props) or 'none'}"
    for k, v in args.items():
        if not _type_ok(v, props[k]):
            want = props[k].get("type") or props[k].get("enum") or "anyOf"
            if "pattern" in props[k]:
                want = f"a string matching {props[k]['pattern']}"
            return f"argument '{k}' must be {want}, got {json.dumps(v)[:40]}"
    return None


class ToolRegistry:
    def __init__(self):
        self.tools: dict[str, Tool] = {}

    def tool(self, fn: Callable | None = None, *, name: str | None = None):
        def add(f):
            t = Tool.from_function(f, name)
            self.tools[t.name] = t
            return f
        return add(fn) if fn is not None else add

    def schemas(self) -> list[dict]:
        return [{"type": "function", "function": t.schema} for t in self.tools.values()]

    def describe(self) -> str:
        """One line per tool for a text prompt: name, JSON parameters, description."""
        lines = []
        for t in self.tools.values():
            params = {k: v.get("type", v.get("enum", "any")) for k, v in t.schema["parameters"]["properties"].items()}
            lines.append(f"{t.name}: {t.schema['description']} Arguments: {json.dumps(params)}")
        return "\n".join(lines)

    def call(self, name: str, args: Any) -> tuple[bool, str]:
        """(ok, observation). Never raises for a bad call: the reason is the observation."""
        tool = self.tools.get(name)
        if tool is None:
            return False, f"Error: unknown tool '{name}'. Available: {', '.join(self.tools)}"
        if isinstance(args, str):  # a bare string: a JSON object, or the value of the one required argument
            required = tool.schema["parameters"]["required"]
            try:
                parsed = json.loads(args)
            except json.JSONDecodeError:
                parsed = args
            if isinstance(parsed, dict):
                args = parsed
            elif len(required) == 1:
                want = tool.schema["parameters"]["properties"][required[0]].get("type")
                args = {required[0]: args if want == "string" else parsed}
        why = validate(args, tool.schema["parameters"])
        if why:
            return False, f"Error: invalid arguments for {name}: {why}"
        try:
            return True, str(tool.fn(**args))
        except Exception as e:  # the tool failed: tell the model, keep the loop going
            return False, f"Error: {name} failed: {type(e).__name__}: {e}"
