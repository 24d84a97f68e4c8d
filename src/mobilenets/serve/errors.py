"""The one error every failed request gets: an HTTP status, a stable code and a sentence."""

from __future__ import annotations


class ServeError(Exception):
    """A request that cannot be answered: ``status`` (4xx for the client's fault), ``code`` (a
    stable identifier for programs), ``message`` (one sentence for people)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_dict(self) -> dict:
        return {"error": self.code, "message": self.message, "status": self.status}
