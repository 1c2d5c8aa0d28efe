"""Auxiliary losses on the predicted clean image (V-Co Table 3)."""
from .hybrid import HybridLoss, drift_field, drifting_regression_loss, hybrid_loss_from_features

__all__ = ["HybridLoss", "drift_field", "drifting_regression_loss", "hybrid_loss_from_features"]
