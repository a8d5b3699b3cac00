"""Prompting a trained model well: k-shot prompts with demonstration selection, chain of thought
with answer extraction, self-consistency, least-to-most, Tree/Graph of Thoughts, best-of-N."""
