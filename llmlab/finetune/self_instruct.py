"""Moved to `llmlab.finetune.instruct.self_instruct`; this name stays importable."""
from llmlab.finetune.instruct.self_instruct import *  # noqa: F401,F403
