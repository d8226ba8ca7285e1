"""What the sync and async clients share: requests as data, the retry policy, and what each
answer means. The two clients only send (``_client.py``)."""

import random
import re
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
from typing_extensions import NotRequired, TypedDict

from ._errors import UsageGateError, UsageGateUnavailableError, _problem
from .types import CheckDecision, EventResult, OnUnavailable, Problem

__version__ = "0.1.0"

#: When a failed attempt may be sent again.
#: ``idempotent``: always (reads, events with their ids, holds with their idempotency keys,
#: commits, releases);
#: ``unsent``: only when usage-gate surely did nothing (the connection was refused, or a 503
#: saying so), e.g. a new override, which has no id of the caller's to deduplicate it by;
#: ``never``: checks, whose answer is needed now (``on_unavailable`` decides instead).
Retry = Literal["idempotent", "unsent", "never"]

#: Statuses that say "not now" rather than "no": a proxy's, or usage-gate's Postgres down.
#: Statuses retried: "not now" rather than "no" (a proxy's, or usage-gate's Postgres down). Any
#: 5xx makes usage-gate unavailable to a check (``on_unavailable``); only these are sent again.
RETRIED = frozenset({502, 503, 504})

#: What an attempt came to: an answer, or a failure to get one.
Outcome = httpx.Response | httpx.TransportError


@dataclass
class Call:
    method: str
    path: str
    timeout: float
    retry: Retry
    query: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    #: Sent with every attempt, beside the client's own.
    headers: dict[str, str] = field(default_factory=dict)
    #: Turns the answer's body into what the method returns.
    extract: Callable[[Any], Any] = lambda body: body

    def params(self) -> dict[str, str]:
        out = {}
        for key, value in self.query.items():
            if value is None or value == "":
                continue
            out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out


@dataclass
class Answer:
    status: int
    body: Any
    request_id: str | None
    #: Which attempt answered (0: the first).
    attempt: int


class RetriedError(Exception):
    """A 4xx that answered a retry: the first attempt's outcome may explain it (a commit's 409)."""

    def __init__(self, error: UsageGateError) -> None:
        super().__init__(str(error))
        self.error = error


class Options(TypedDict):
    """The clients' options (``UsageGate(base_url=..., api_key=..., ...)``); see ``Core``."""

    base_url: str
    api_key: str
    timeout: NotRequired[float]
    write_timeout: NotRequired[float]
    on_unavailable: NotRequired[OnUnavailable]
    retries: NotRequired[int]
    retry_base_delay: NotRequired[float]
    max_retry_delay: NotRequired[float]


class Core:
    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        timeout: float = 0.5,
        write_timeout: float = 10.0,
        on_unavailable: OnUnavailable = "throw",
        retries: int = 4,
        retry_base_delay: float = 0.1,
        max_retry_delay: float = 5.0,
    ) -> None:
        """``timeout``: a check's deadline in seconds (default 0.5: a warm check answers in well
        under a millisecond, a cold one waits for BillaBear up to 250 ms). ``write_timeout``:
        each attempt's deadline for events, holds and admin calls. ``on_unavailable``: a check
        when usage-gate cannot be reached or answers 5xx: ``allow``, ``deny`` (a decision marked
        ``client_fallback``) or ``throw``. ``retries``: after the first attempt, for calls safe
        to repeat, with exponential backoff and full jitter from ``retry_base_delay``, capped at
        ``max_retry_delay`` (also the cap on ``Retry-After``)."""
        if not base_url:
            raise ValueError("UsageGate: base_url is required")
        if not api_key:
            raise ValueError("UsageGate: api_key is required")
        for name, value in (
            ("timeout", timeout),
            ("write_timeout", write_timeout),
            ("retry_base_delay", retry_base_delay),
            ("max_retry_delay", max_retry_delay),
        ):
            if not value > 0:
                raise ValueError(f"UsageGate: {name} must be a positive number of seconds, got {value!r}")
        if on_unavailable not in ("allow", "deny", "throw"):
            raise ValueError(f'UsageGate: on_unavailable must be "allow", "deny" or "throw", got {on_unavailable!r}')
        self.base_url = base_url.rstrip("/")
        self.headers = {
            "authorization": f"Bearer {api_key}",
            "accept": "application/json",
            "user-agent": f"usage-gate-client-python/{__version__}",
        }
        self.timeout = timeout
        self.write_timeout = write_timeout
        self.on_unavailable: OnUnavailable = on_unavailable
        self.retries = max(0, int(retries))
        self.retry_base_delay = retry_base_delay
        self.max_retry_delay = max_retry_delay

    # The retry loop, without I/O: each client sends, this decides.

    def attempts(self, call: Call) -> Generator[float, Outcome, Answer]:
        """Receives each attempt's outcome (``send``), then yields the seconds to wait before
        the next; returns the answer (``StopIteration.value``) or raises what failed. A client
        drives it: ``next()`` to start, ``send(outcome)``, sleep, ``next()``, and so on."""
        attempt = 0
        while True:
            outcome = yield 0.0
            if isinstance(outcome, httpx.TransportError):
                failure: UsageGateError = self.network_failure(call, outcome)
                delay = self.delay(call, attempt, unsent=self.unsent(outcome))
            else:
                answer = self.answer(call, outcome, attempt)
                if outcome.is_success:
                    return answer
                failure = self.failure(call, answer)
                if answer.status not in RETRIED:
                    raise RetriedError(failure) if attempt else failure
                delay = self.delay(
                    call,
                    attempt,
                    unsent=answer.status == 503,
                    retry_after=self.retry_after(outcome.headers.get("retry-after")),
                )
            if delay is None:
                raise failure
            yield delay
            attempt += 1

    def request(self, http: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
        """One attempt's request, as either client sends it."""
        return http.build_request(
            call.method,
            self.base_url + call.path,
            params=call.params(),
            json=call.body,
            headers={**self.headers, **call.headers},
            timeout=call.timeout,
        )

    # What a failed attempt means.

    def delay(self, call: Call, attempt: int, *, unsent: bool, retry_after: float | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None: give up (raise)."""
        if call.retry == "never" or (call.retry == "unsent" and not unsent) or attempt >= self.retries:
            return None
        backoff = random.uniform(0, min(self.max_retry_delay, self.retry_base_delay * 2**attempt))
        return min(self.max_retry_delay, max(retry_after or 0.0, backoff))

    def answer(self, call: Call, response: httpx.Response, attempt: int) -> Answer:
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = response.text
        return Answer(response.status_code, body, response.headers.get("x-request-id"), attempt)

    def failure(self, call: Call, answer: Answer) -> UsageGateError:
        problem = _problem(answer.body)
        what = f"{problem['code']}: {problem['detail']}" if problem else f"HTTP {answer.status}"
        cls = UsageGateUnavailableError if answer.status >= 500 else UsageGateError
        return cls(
            f"usage-gate {call.method} {call.path}: {what}",
            status=answer.status,
            problem=problem,
            request_id=answer.request_id,
        )

    def network_failure(self, call: Call, error: httpx.TransportError) -> UsageGateUnavailableError:
        if isinstance(error, httpx.TimeoutException):
            reason = f"no answer within {call.timeout:g} s ({type(error).__name__})"
        else:
            reason = f"{type(error).__name__}: {error}"
        return UsageGateUnavailableError(f"usage-gate {call.method} {call.path}: {reason}")

    @staticmethod
    def unsent(error: httpx.TransportError) -> bool:
        """Nothing reached usage-gate: a refused or failed connect (not a drop after sending)."""
        return isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))

    @staticmethod
    def retry_after(header: str | None) -> float | None:
        if not header:
            return None
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            import datetime

            at = parsedate_to_datetime(header)
            return max(0.0, (at - datetime.datetime.now(at.tzinfo)).total_seconds())
        except (TypeError, ValueError):
            return None

    # The calls.

    def check_call(
        self, customer_id: str, cost: int | None, timeout: float | None, plan: Mapping[str, Any] | None = None
    ) -> Call:
        return Call(
            "GET",
            f"/v1/customers/{segment(customer_id, 'customer_id')}/check",
            timeout or self.timeout,
            "never",
            query={"cost": cost, **(plan or {})},
        )

    def check_many_call(self, items: list[dict[str, Any]], timeout: float | None) -> Call:
        return Call(
            "POST",
            "/v1/check",
            timeout or self.timeout,
            "never",
            body={"customers": items},
            extract=lambda body: body["decisions"],
        )

    def fallback(
        self, error: UsageGateUnavailableError, mode: OnUnavailable | None, customer_id: Any, cost: int | None
    ) -> CheckDecision:
        chosen = mode or self.on_unavailable
        if chosen == "throw":
            raise error
        return {
            "customer_id": customer_id,
            "allowed": chosen == "allow",
            "status": "unknown",
            "reasons": ["usage_gate_unavailable"],
            "limits": [],
            "estimate": None,
            "cost": cost,
            "fallback": True,
            "source": "fallback",
            "client_fallback": True,
            "error": str(error),
        }

    def event_call(self, event: Mapping[str, Any], enforce: bool, timeout: float | None) -> Call:
        return Call(
            "POST",
            "/v1/events",
            timeout or self.write_timeout,
            "idempotent",
            query={"enforce": True if enforce else None},
            body=with_event_id(event),
        )

    def events_call(self, events: Iterable[Mapping[str, Any]], enforce: bool, timeout: float | None) -> Call:
        return Call(
            "POST",
            "/v1/events/batch",
            timeout or self.write_timeout,
            "idempotent",
            query={"enforce": True if enforce else None},
            body={"events": [with_event_id(e) for e in events]},
        )

    def reserve_call(
        self,
        customer_id: str,
        amount: int | None,
        code: str | None,
        value: float | None,
        ttl_ms: int | None,
        timeout: float | None,
        idempotency_key: str | None,
    ) -> Call:
        body = {
            k: v for k, v in (("amount", amount), ("code", code), ("value", value), ("ttl_ms", ttl_ms)) if v is not None
        }
        # One key for every attempt: a retry after a lost answer gets the hold it made.
        return Call(
            "POST",
            f"/v1/customers/{segment(customer_id, 'customer_id')}/reservations",
            timeout or self.write_timeout,
            "idempotent",
            body=body,
            headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
        )

    def commit_call(self, reservation_id: str, events: Iterable[Mapping[str, Any]], timeout: float | None) -> Call:
        return Call(
            "POST",
            f"/v1/reservations/{segment(reservation_id, 'reservation_id')}/commit",
            timeout or self.write_timeout,
            "idempotent",
            body={"events": [with_event_id(e) for e in events]},
        )

    def committed_before(self, call: Call, reservation_id: str) -> dict[str, Any]:
        """A retried commit that found the hold committed: the attempt whose answer was lost
        stored the events (a commit is one transaction), so each is a duplicate now."""
        events = call.body["events"]
        customer = next((e["customer"] for e in events if e.get("customer")), "")
        return {
            "reservation_id": reservation_id,
            "customer_id": customer,
            "expired": False,
            "results": [{"event_id": e["event_id"], "status": "duplicate"} for e in events],
        }

    def release_call(self, reservation_id: str, timeout: float | None) -> Call:
        return Call(
            "DELETE",
            f"/v1/reservations/{segment(reservation_id, 'reservation_id')}",
            timeout or self.write_timeout,
            "idempotent",
            extract=lambda body: None,
        )

    def audit_call(self, filters: dict[str, Any], cursor: str | None, timeout: float | None) -> Call:
        query = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in filters.items()}
        return Call("GET", "/v1/audit", timeout or self.write_timeout, "idempotent", query={**query, "cursor": cursor})

    def read(
        self,
        path: str,
        timeout: float | None,
        extract: Callable[[Any], Any] = lambda b: b,
        query: dict[str, Any] | None = None,
    ) -> Call:
        return Call("GET", path, timeout or self.write_timeout, "idempotent", query=query or {}, extract=extract)

    def change(
        self,
        method: str,
        path: str,
        timeout: float | None,
        body: Any = None,
        extract: Callable[[Any], Any] = lambda b: b,
        retry: Retry = "unsent",
        query: dict[str, Any] | None = None,
    ) -> Call:
        return Call(method, path, timeout or self.write_timeout, retry, query=query or {}, body=body, extract=extract)


def limit_exceeded(error: BaseException) -> dict[str, Any] | None:
    """The refusal in a 402 ``usage_limit_exceeded``, as a result instead of an error."""
    inner = error.error if isinstance(error, RetriedError) else error
    if isinstance(inner, UsageGateError) and inner.status == 402 and inner.code == "usage_limit_exceeded":
        problem: Problem = inner.problem  # type: ignore[assignment]
        if problem.get("decision"):
            return {
                "status": "refused",
                "reason": "usage_limit_exceeded",
                "decision": problem["decision"],
                "problem": problem,
            }
    return None


def event_result(call: Call, answer_body: dict[str, Any]) -> EventResult:
    return {**answer_body, "event_id": answer_body.get("event_id") or call.body["event_id"]}  # type: ignore[typeddict-item]


def with_event_id(event: Mapping[str, Any]) -> dict[str, Any]:
    return dict(event) if event.get("event_id") else {**event, "event_id": str(uuid.uuid4())}


class HoldAsk(TypedDict, total=False):
    """What a ``reservation`` block asks ``reserve`` for when it is entered."""

    amount: int | None
    code: str | None
    value: float | None
    ttl_ms: int | None
    timeout: float | None
    idempotency_key: str | None


def for_customer(events: Iterable[Mapping[str, Any]], customer_id: str) -> list[dict[str, Any]]:
    """Events without ``customer`` or ``subscription`` are the hold's customer's."""
    return [dict(e) if e.get("customer") or e.get("subscription") else {**e, "customer": customer_id} for e in events]


_UNSAFE = re.compile(r"[/?#\\]|^\.\.?$")


def segment(value: str, name: str) -> str:
    """A path segment, refused before it reaches a URL when it could change the path."""
    if not isinstance(value, str) or not value or _UNSAFE.search(value):
        raise ValueError(f"{name} must be a non-empty id without / ? # or \\, got {value!r}")
    return quote(value, safe="")


def check_items(customers: Iterable[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": c} if isinstance(c, str) else dict(c) for c in customers]
