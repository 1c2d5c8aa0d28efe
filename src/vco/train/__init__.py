"""Training: the loop (trainer.py), the objective it optimises (objective.py), EMAs (ema.py),
atomic safetensors checkpoints (checkpoint.py) and reading runs back (runs.py)."""
from .checkpoint import CheckpointError
from .objective import Objective, build_objective
from .runs import load_run_model
from .trainer import Trainer

__all__ = ["Trainer", "Objective", "build_objective", "load_run_model", "CheckpointError"]
