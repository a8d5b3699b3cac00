"""Renamed: `llmlab.verb` (Verb, the CLI's verb record). This name stays importable for stages written against it."""
from llmlab.verb import *  # noqa: F401,F403
from llmlab.verb import Verb  # noqa: F401
