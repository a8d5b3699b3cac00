"""llmlab: make, understand and use small large-language-models, data to serving."""

__version__ = "0.1.0"
