"""The one error of the interop package."""
from __future__ import annotations

from ..train.checkpoint import CheckpointError


class ConversionError(CheckpointError):
    """An official checkpoint that cannot be converted; the message says why and what to do."""
