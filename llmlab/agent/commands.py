"""CLI verbs: `llmlab agent run` (one question through ReAct / plan-and-execute / Reflexion / debate,
traced) and `llmlab agent eval` (success rate on multi-step arithmetic, with and without tools)."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from llmlab.verb import Verb, verb
from llmlab.errors import UserError, require

VERBS: dict[str, Verb] = {}

PATTERNS = ("react", "plan", "debate")


@dataclass
class AgentRunConfig:
    question: str = field(default="", metadata={"help": "the task (required)"})
    model: str = "smollm2"
    tools: list[str] = field(default_factory=lambda: ["calculator"], metadata={"help": "calculator,python,wikipedia,retrieve"})
    index: str = field(default="", metadata={"help": "RAG index for the retrieve tool"})
    pattern: str = field(default="react", metadata={"help": "react | plan | debate"})
    max_steps: int = 6
    max_seconds: float = 120.0
    max_new_tokens: int = 128
    constrained: bool = field(default=False, metadata={"help": "decode each step under the step grammar (tool calls "
                                                               "always well-formed)"})
    trace: str = field(default="", metadata={"help": "append the JSONL trace to this file"})
    quiet: bool = field(default=False, metadata={"help": "no step-by-step trace on stderr"})


@dataclass
class AgentEvalConfig:
    model: str = "smollm2"
    n: int = field(default=20, metadata={"help": "problems (multi-step arithmetic, seeded)"})
    seed: int = 0
    tools: list[str] = field(default_factory=lambda: ["none", "calculator", "python"],
                             metadata={"help": "conditions to compare: none (chain of thought), calculator, python"})
    max_steps: int = 4
    max_new_tokens: int = 96
    constrained: bool = field(default=True, metadata={"help": "decode ReAct turns under the step grammar (tool calls "
                                                              "always well-formed); false: free text"})
    out: str = field(default="", metadata={"help": "write per-item results (JSONL) here"})


@verb(VERBS, "agent run", AgentRunConfig)
def run_agent(cfg: AgentRunConfig) -> int:
    """answer a task with a ReAct agent and tools (traced step by step)

    Example: llmlab agent run question="What is 17 * 23 + 5?" tools=calculator,python
    """
    from llmlab.agent.builtin import make_registry
    from llmlab.agent.patterns import debate, plan_and_execute
    from llmlab.agent.react import ReActAgent
    from llmlab.agent.trace import Tracer
    from llmlab.prompt.llm import LocalLLM
    require(cfg.question, 'question is empty: pass question="..."')
    if cfg.pattern not in PATTERNS:
        raise UserError(f"pattern: unknown '{cfg.pattern}'; known: {', '.join(PATTERNS)}")
    if cfg.max_steps < 1 or cfg.max_seconds <= 0:
        raise UserError("max_steps must be >= 1 and max_seconds > 0")
    tools = make_registry(cfg.tools, cfg.index)
    llm = LocalLLM.load(cfg.model)
    tracer = Tracer(cfg.trace or None, echo=not cfg.quiet)
    try:
        if cfg.pattern == "debate":
            answer, _ = debate(llm, cfg.question, tracer=tracer)
            print(answer)
            return 0
        agent = ReActAgent(llm, tools, cfg.max_steps, cfg.max_seconds, cfg.max_new_tokens, tracer,
                           constrained=cfg.constrained)
        if cfg.pattern == "plan":
            res = plan_and_execute(agent, cfg.question)
        else:  # one worked example in the prompt when the calculator is a tool (few-shot ReAct, as in the paper)
            from llmlab.agent.tasks import REACT_EXAMPLE
            res = agent.run(cfg.question, REACT_EXAMPLE if "calculator" in tools.tools else "")
        print(res.answer if res.answer is not None else f"(no answer: {res.status} after {res.steps} steps)")
        print(f"status={res.status} steps={res.steps} tool_calls={res.tool_calls} tool_errors={res.tool_errors} "
              f"tokens={llm.tokens}", file=sys.stderr)
        return 0 if res.status == "answered" else 1
    finally:
        tracer.close()


@verb(VERBS, "agent eval", AgentEvalConfig)
def run_eval(cfg: AgentEvalConfig) -> int:
    """success rate on multi-step arithmetic with and without tools

    Example: llmlab agent eval n=20 tools=none,calculator
    """
    from llmlab.agent.evaluate import evaluate_multistep
    from llmlab.prompt.llm import LocalLLM
    bad = [t for t in cfg.tools if t not in ("none", "calculator", "python")]
    if bad:
        raise UserError(f"tools: unknown condition(s) {bad}; known: none, calculator, python")
    llm = LocalLLM.load(cfg.model)
    if cfg.n < 1 or cfg.max_steps < 1:
        raise UserError("n and max_steps must be >= 1")
    rows = evaluate_multistep(llm, cfg.n, cfg.seed, cfg.tools, cfg.max_steps, cfg.max_new_tokens, cfg.out or None,
                              cfg.constrained)
    print(json.dumps(rows))
    return 0
