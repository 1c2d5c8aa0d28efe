"""Training: the loop (trainer.py), EMAs (ema.py), atomic safetensors checkpoints (checkpoint.py)."""
from .checkpoint import CheckpointError
from .trainer import Trainer, load_run_model

__all__ = ["Trainer", "load_run_model", "CheckpointError"]
