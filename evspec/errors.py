"""Typed errors. Library code raises these with a message a user can act on;
the CLI prints them as one red line and exits non-zero (``--debug`` shows the traceback)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class EvspecError(Exception):
    """Base class of every error evspec raises on purpose.

    ``parameters``: the library parameters the message names, as written there (``max_new_tokens``,
    ``force=True``, ``temperature=0``). Library messages name parameters, never CLI flags; the CLI
    shows each named parameter as its flag (``--max-new-tokens``, ``--force``, ``--temperature 0``).
    """

    def __init__(self, message: str = "", *, parameters: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.parameters = tuple(parameters)


class InputError(EvspecError):
    """A file or value given by the user is missing, malformed or out of range."""

    def __init__(self, message: str, path: str | Path | None = None, *, parameters: Sequence[str] = ()) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message, parameters=parameters)


class UnsafeFileError(InputError):
    """A file would execute code when loaded (e.g. a pickle with callables)."""


class ConfigError(EvspecError):
    """An option or combination of options that cannot work."""


class ModelError(EvspecError):
    """A model name, checkpoint folder or checkpoint content that cannot be loaded."""


class EvspecWarning(UserWarning):
    """Something a run should know but that does not stop it (e.g. input its model was never
    trained on); the CLI prints each as one yellow line."""
