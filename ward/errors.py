"""The ward console's error for an action it cannot carry out (shared by the console and its rollouts)."""

from __future__ import annotations


class WardError(Exception):
    """An action the ward cannot carry out; ``status``/``code`` shape the HTTP error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
