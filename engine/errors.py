"""The error a training run stops with when the run itself went wrong (not the config, model or data)."""
from __future__ import annotations


class TrainingError(RuntimeError):
    """The message says what happened; `hint` what to do about it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint
