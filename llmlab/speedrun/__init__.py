"""`llmlab speedrun`: real text -> tokenizer -> pretrained small model -> report, on a laptop CPU."""
