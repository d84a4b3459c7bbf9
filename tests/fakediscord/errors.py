"""Discord-style API errors raised while handling a request."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Becomes a Discord error response: ``{"message": ..., "code": ...}`` with an HTTP status."""

    def __init__(
        self, status: int, code: int, message: str, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message, self.errors = status, code, message, errors


def invalid_form(message: str) -> ApiError:
    """400 / 50035, Discord's answer to a payload it will not accept."""
    return ApiError(400, 50035, f"Invalid Form Body: {message}")
