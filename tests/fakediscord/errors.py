"""Discord-style API errors raised while handling a request."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
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


@dataclass
class Fault:
    """A scripted server error: the next ``times`` requests matching ``method`` and ``path`` (a
    regular expression searched in the request path) get ``status``. With ``after_commit`` the
    request is carried out first (the message is created or edited), then answered with the
    error, as when Discord's edge loses the answer of a backend that did the work. With
    ``delay`` the answer comes that many seconds late; with ``status`` None it is the normal
    answer (a slow request, not a failed one)."""

    method: str
    path: str
    status: int | None = 503
    times: int = 1
    after_commit: bool = False
    delay: float = 0.0
    served: list[str] = field(default_factory=list)  # the paths it answered

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and re.search(self.path, path) is not None


SERVER_ERRORS = {
    500: "500: Internal Server Error",
    502: "502: Bad Gateway",
    503: "503: Service Unavailable",
    504: "504: Gateway Timeout",
}
