"""Instruction data: builders that turn packaged sources and templates into chat examples (TRL 'messages' JSONL)."""
