"""ReAct (Yao et al. 2023): the model interleaves reasoning and acting in one transcript,

    Thought: I need the product first.
    Action: calculator
    Action Input: {"expression": "17 * 23"}
    Observation: 391          <- written by the loop, from the tool
    ...
    Final Answer: 391

Generation stops at "Observation:"; the loop parses the action, validates its arguments against
the tool's JSON schema, runs it and appends the observation. A malformed step or a failing call
becomes an error observation and the loop goes on. Budgets: `max_steps` model calls and
`max_seconds` wall time; the result's status says how the run ended (answered, max_steps, timeout).

Constrained steps (`constrained=True`): each model turn is decoded under the engine's token mask
(llmlab.infer.constrained) for the regular language of one well-formed step,

    Thought: <one line>\nAction: <a tool name>\nAction Input: <JSON matching that tool's schema>
  | Thought: <one line>\nFinal Answer: <answer_pattern>

so a small model cannot break the format, name a tool that does not exist or send arguments that
fail the schema (a string `pattern` in the schema, such as the calculator's, included) -- the
"tool calls through constrained decoding" of OpenAI's structured outputs, inside the ReAct loop.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

from llmlab.agent.tools import ToolRegistry
from llmlab.agent.trace import Tracer

_ACTION = re.compile(r"Action:\s*(.+?)\s*\n+\s*Action Input:\s*(.*)", re.S)
_FINAL = re.compile(r"Final Answer:\s*(.*)", re.S)


@dataclass
class AgentResult:
    answer: str | None
    status: str  # answered | max_steps | timeout
    steps: int
    tool_calls: int = 0
    tool_errors: int = 0
    transcript: str = ""
    events: list = field(default_factory=list)


def system_prompt(tools: ToolRegistry, extra: str = "") -> str:
    names = ", ".join(tools.tools) or "none"
    return (f"You answer questions step by step, using tools when they help.\nTools:\n{tools.describe()}\n\n"
            "Use exactly this format:\nThought: what to do next\nAction: one of [" + names + "]\n"
            'Action Input: the arguments as JSON, e.g. {"expression": "2 * 3"}\nObservation: the tool result\n'
            "... (repeat Thought/Action/Action Input/Observation as needed)\n"
            "Thought: I know the answer\nFinal Answer: the answer" + (f"\n\n{extra}" if extra else ""))


def step_pattern(tools: ToolRegistry, answer_pattern: str = r"[^\n]{1,200}", thought_chars: int = 150) -> str:
    """The regex of one ReAct turn after the "Thought:" prefix (see the module docstring)."""
    import regex
    from llmlab.infer.constrained import schema_to_regex
    acts = [f"Action: {regex.escape(name)}\nAction Input: {schema_to_regex(t.schema['parameters'])}"
            for name, t in tools.tools.items()]
    return rf" [^\n]{{1,{thought_chars}}}\n(?:" + "|".join(acts + [f"Final Answer: (?:{answer_pattern})"]) + ")"


def _parse_input(raw: str):
    raw = raw.strip()
    m = re.match(r"\{.*\}", raw, re.S)  # the first JSON object; the model may keep talking after it
    if m:
        text, depth = m.group(0), 0
        for i, ch in enumerate(text):
            depth += ch == "{"
            depth -= ch == "}"
            if depth == 0:
                try:
                    return json.loads(text[: i + 1])
                except json.JSONDecodeError:
                    break
    return raw.splitlines()[0].strip().strip('"') if raw else ""


def parse_step(text: str) -> tuple[str, object]:
    """("final", answer) | ("action", (tool, args)) | ("invalid", reason)."""
    act, fin = _ACTION.search(text), _FINAL.search(text)
    if fin and (not act or fin.start() < act.start()):
        return "final", fin.group(1).strip().splitlines()[0].strip() if fin.group(1).strip() else ""
    if act:
        return "action", (act.group(1).strip().strip("`").split()[0] if act.group(1).strip() else "",
                          _parse_input(act.group(2)))
    return "invalid", "no 'Action:' + 'Action Input:' or 'Final Answer:' found"


class ReActAgent:
    def __init__(self, llm, tools: ToolRegistry, max_steps: int = 6, max_seconds: float = 120.0,
                 max_new_tokens: int = 128, tracer: Tracer | None = None, memory=None, temperature: float = 0.0,
                 constrained: bool = False, answer_pattern: str = r"[^\n]{1,200}"):
        self.llm, self.tools = llm, tools
        self.pattern = step_pattern(tools, answer_pattern) if constrained else None
        self.max_steps, self.max_seconds, self.max_new_tokens = max_steps, max_seconds, max_new_tokens
        self.tracer = tracer or Tracer()
        self.memory, self.temperature = memory, temperature

    def run(self, question: str, extra_instructions: str = "", seed: int = 0) -> AgentResult:
        t0 = time.perf_counter()
        context = self.memory.context(question) if self.memory is not None else ""
        user = (f"Context from memory:\n{context}\n\n" if context else "") + f"Question: {question}"
        msgs = [{"role": "system", "content": system_prompt(self.tools, extra_instructions)},
                {"role": "user", "content": user}]
        pad = "Thought:"
        self.tracer.log("question", question)
        calls = errors = 0
        for step in range(1, self.max_steps + 1):
            if time.perf_counter() - t0 > self.max_seconds:
                return self._end(None, "timeout", step - 1, calls, errors, pad, question)
            if self.pattern is None:
                out = self.llm.chat(msgs, self.max_new_tokens, self.temperature, seed + step, stop=("Observation:",),
                                    prefix=pad)
            else:
                out = self.llm.chat(msgs, self.max_new_tokens, self.temperature, seed + step, prefix=pad,
                                    constraint=self.pattern)
            kind, val = parse_step("Thought:" + out if not out.lstrip().startswith(("Action", "Final")) else out)
            self.tracer.log("thought", out.strip(), step=step)
            pad += out.rstrip() + "\n"
            if kind == "final":
                return self._end(val, "answered", step, calls, errors, pad, question)
            if kind == "invalid":
                obs, ok = f"Error: {val}. Use the format above.", False
            else:
                name, args = val
                calls += 1
                self.tracer.log("action", {"tool": name, "args": args}, step=step)
                ok, obs = self.tools.call(name, args)
            errors += not ok
            self.tracer.log("observation" if ok else "error", obs, step=step)
            pad += f"Observation: {obs}\nThought:"
        return self._end(None, "max_steps", self.max_steps, calls, errors, pad, question)

    def _end(self, answer, status, steps, calls, errors, transcript, question) -> AgentResult:
        self.tracer.log("final" if answer is not None else "status", answer if answer is not None else status,
                        steps=steps, status=status)
        if self.memory is not None and answer is not None:
            self.memory.add(question, answer)
        return AgentResult(answer, status, steps, calls, errors, transcript, list(self.tracer.events))
