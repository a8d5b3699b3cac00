"""Evaluation: exact metrics, deterministic log-likelihood scoring, packaged tasks, a sandbox
for generated code, an lm-eval bridge, contamination checks and a report card (docs/eval.md)."""
