from typing import Any

from .types import Decision, FieldError, Problem


class UsageGateError(Exception):
    """usage-gate answered with an error (its problem+json fields are here), or could not be
    reached (``UsageGateUnavailableError``)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        problem: Problem | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        #: The HTTP status; None when no answer came.
        self.status = status
        #: The whole problem+json body, with any extension fields.
        self.problem = problem
        #: The problem's stable code (``invalid_request``, ``conflict``, ``not_found``, ...).
        self.code: str | None = problem.get("code") if problem else None
        self.type: str | None = problem.get("type") if problem else None
        self.title: str | None = problem.get("title") if problem else None
        self.detail: str | None = problem.get("detail") if problem else None
        #: Each invalid field, named.
        self.errors: list[FieldError] = list(problem.get("errors") or []) if problem else []
        #: usage-gate's ``X-Request-Id``: every log line of the request carries it.
        self.request_id = request_id


class UsageGateUnavailableError(UsageGateError):
    """usage-gate could not be reached, did not answer in time, or answered 502/503/504."""


class UsageLimitExceeded(UsageGateError):
    """Raised by ``reservation(...)`` when the hold is refused (402): the block must not run.
    (``reserve`` and ``send_event`` return ``status: "refused"`` instead.)"""

    def __init__(self, message: str, *, decision: Decision, problem: Problem, request_id: str | None = None) -> None:
        super().__init__(message, status=402, problem=problem, request_id=request_id)
        self.decision = decision


class WebhookVerificationError(Exception):
    """A webhook's signature, timestamp or headers did not verify: do not act on it."""


def _problem(body: Any) -> Problem | None:
    return body if isinstance(body, dict) and isinstance(body.get("code"), str) else None  # type: ignore[return-value]
