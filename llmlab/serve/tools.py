"""Structured output for /v1/chat/completions: `response_format` (JSON mode, JSON schema) and
OpenAI-style function calling (`tools`, `tool_choice` -> `tool_calls`).

Both are constrained decoding (llmlab.infer.constrained): the request's output language is a
regular expression, and the engine masks every token that would leave it (a per-request logits
processor inside the batched step). So a json_schema answer always parses and validates, and a
tool call always names a declared tool with arguments that match its `parameters` schema.

Tool calls: the tools are described to the model in a system message (name, description,
parameter schema) with the instruction to answer a call as one JSON object
{"name": ..., "arguments": {...}}. tool_choice "required" or a named function constrains the whole
answer to such an object; "auto" allows either a call (an answer that starts with "{") or free text
(anything else); "none" leaves tools out. An answer that is a call comes back as `tool_calls` with
finish_reason "tool_calls" (one call per turn; `parallel_tool_calls` is accepted and ignored).
Earlier turns with `tool_calls` and `tool` results are rendered back as text in the same format.
"""
from __future__ import annotations

import json
import uuid

from llmlab.errors import UserError
from llmlab.infer.constrained import JSON_OBJECT, ConstrainedLogits, Constraint, schema_to_regex
from llmlab.serve.protocol import APIError, ChatCompletionRequest, message_text

FREE_TEXT = r"[^{][\s\S]*"  # tool_choice "auto": anything that does not start a call


class OutputFormat:
    """What one chat request's answer must look like, and how to turn it into a message."""

    def __init__(self, body: ChatCompletionRequest, tokenizer):
        self.tok = tokenizer
        choice = body.tool_choice if body.tool_choice is not None else ("auto" if body.tools else "none")
        self.tools = {t.function.name: t.function for t in (body.tools or [])} if choice != "none" else {}
        if not isinstance(choice, str):  # a named function
            if choice.function.name not in self.tools:
                raise APIError(400, f"tool_choice names '{choice.function.name}', which is not in 'tools'",
                               "tool_choice")
            self.tools = {choice.function.name: self.tools[choice.function.name]}
            choice = "required"
        if choice == "required" and not self.tools:
            raise APIError(400, "tool_choice 'required' needs at least one tool in 'tools'", "tool_choice")
        self.choice = choice
        self.pattern = self._pattern(body)

    def _pattern(self, body) -> str | None:
        rf = body.response_format
        content, where = None, "response_format"
        try:
            if rf is not None and rf.type == "json_object":
                content = JSON_OBJECT
            elif rf is not None and rf.type == "json_schema":
                if rf.json_schema is None or rf.json_schema.schema_ is None:
                    raise APIError(400, "response_format json_schema needs 'json_schema': {'name': ..., "
                                        "'schema': {...}}", "response_format")
                content = schema_to_regex(rf.json_schema.schema_)
            if not self.tools:
                return content
            where = "tools"
            calls = "|".join(schema_to_regex({"type": "object", "properties": {
                "name": {"const": name}, "arguments": f.parameters or {"type": "object"}}})
                for name, f in self.tools.items())
        except (UserError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            raise APIError(400, f"{where}: unsupported schema ({e})", where) from None
        if self.choice == "required":
            return f"(?:{calls})"
        return f"(?:{calls}|{content or FREE_TEXT})"

    # ------------------------------------------------------------------ prompt
    def conversation(self, messages) -> list[dict]:
        """The messages as the chat template's {role, content} turns: tool calls and results as
        text, and the tools described in the system message."""
        conv = []
        for m in messages:
            text = message_text(m)
            if m.role == "assistant" and m.tool_calls:
                calls = [_call_text(c.function.name, c.function.arguments) for c in m.tool_calls]
                text = "\n".join(([text] if text else []) + calls)
            conv.append({"role": m.role, "content": text})
        if self.tools:
            desc = self.describe()
            if conv and conv[0]["role"] == "system":
                conv[0] = {"role": "system", "content": conv[0]["content"] + "\n\n" + desc}
            else:
                conv.insert(0, {"role": "system", "content": desc})
        return conv

    def describe(self) -> str:
        lines = ["You can call these tools:"]
        for name, f in self.tools.items():
            lines.append(json.dumps({"name": name, "description": f.description or "",
                                     "parameters": f.parameters or {"type": "object"}}))
        how = ("Answer with a call" if self.choice == "required" else
               "To call a tool, answer with only")
        lines.append(f'{how} as one JSON object: {{"name": <tool name>, "arguments": {{...}}}}.')
        return "\n".join(lines)

    # ------------------------------------------------------------------ decoding
    def processor(self, max_new_tokens: int, greedy: bool = False):
        """A fresh logits processor for one request (None: unconstrained); greedy requests stop the
        scan at the most likely allowed token (exact for argmax)."""
        if self.pattern is None:
            return None
        try:
            constraint = Constraint(self.pattern, self.tok)
        except UserError as e:  # e.g. a string `pattern` that is no valid regular expression
            raise APIError(400, str(e), "tools" if self.tools else "response_format") from None
        return ConstrainedLogits(constraint, max_new_tokens, **({"mass": 0.0} if greedy else {}))

    def starts_call(self, text: str) -> bool:
        return bool(self.tools) and text.lstrip().startswith("{")

    def message(self, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
        """The assistant message and finish_reason for a complete answer."""
        call = self.parse_call(text)
        if call is None:
            return {"role": "assistant", "content": text}, finish_reason
        return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"

    def parse_call(self, text: str) -> dict | None:
        if not self.starts_call(text):
            return None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return None
        if not isinstance(obj, dict) or obj.get("name") not in self.tools:
            return None
        return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": obj["name"], "arguments": json.dumps(obj.get("arguments", {}))}}


def _call_text(name: str, arguments: str) -> str:
    try:
        args = json.loads(arguments)
    except json.JSONDecodeError:
        args = arguments
    return json.dumps({"name": name, "arguments": args})
