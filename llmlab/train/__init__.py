"""Pretraining: `train(cfg, model, train_loader, val_loader)` with AdamW, lr schedules, gradient
accumulation and clipping, mixed precision, DDP, exact-resume checkpoints and a loss-spike guard."""
from llmlab.train.config import TrainConfig
from llmlab.train.loader import TokenArrayLoader
from llmlab.train.trainer import TrainResult, evaluate, train

__all__ = ["TrainConfig", "TokenArrayLoader", "TrainResult", "evaluate", "train"]
