"""Agents: a tool registry (JSON schemas from signatures and docstrings), a ReAct loop with step
and time budgets and JSONL traces, memory, plan-and-execute, Reflexion and a two-agent debate."""
