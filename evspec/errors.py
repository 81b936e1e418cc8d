"""Typed errors. Library code raises these with a message a user can act on;
the CLI prints them as one red line and exits non-zero (``--debug`` shows the traceback)."""

from __future__ import annotations

from pathlib import Path


class EvspecError(Exception):
    """Base class of every error evspec raises on purpose."""


class InputError(EvspecError):
    """A file or value given by the user is missing, malformed or out of range."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


class UnsafeFileError(InputError):
    """A file would execute code when loaded (e.g. a pickle with callables)."""


class ConfigError(EvspecError):
    """An option or combination of options that cannot work."""


class ModelError(EvspecError):
    """A model name, checkpoint folder or checkpoint content that cannot be loaded."""


class EvspecWarning(UserWarning):
    """Something a run should know but that does not stop it (e.g. input its model was never
    trained on); the CLI prints each as one yellow line."""
