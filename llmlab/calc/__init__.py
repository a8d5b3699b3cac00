"""llmlab calc: the textbook formulas of LLM training and inference, one module per formula, each
citing its source and each checked against a measurement (tests/test_calc_*.py)."""
