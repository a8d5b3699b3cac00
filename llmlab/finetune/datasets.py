"""Moved to `llmlab.finetune.instruct` (builders.py, self_instruct.py); this name stays importable."""
from llmlab.finetune.instruct.builders import *  # noqa: F401,F403
from llmlab.finetune.instruct.builders import _question, _user, _assistant  # noqa: F401
from llmlab.finetune.instruct.self_instruct import from_model as self_instruct  # noqa: F401
