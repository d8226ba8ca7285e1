"""``UsageGate`` (sync, on ``httpx.Client``) and ``AsyncUsageGate`` (on ``httpx.AsyncClient``).
Both build their requests and read their answers with ``Core``; only the sending differs."""

import asyncio
import concurrent.futures
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, cast

import httpx
from typing_extensions import Self, Unpack

from . import _admin
from ._core import (
    Answer,
    Call,
    Core,
    HoldAsk,
    Options,
    Outcome,
    RetriedError,
    check_items,
    event_result,
    for_customer,
    limit_exceeded,
    segment,
)
from ._errors import UsageGateError, UsageGateUnavailableError, UsageLimitExceeded
from .types import (
    AuditRecord,
    CheckDecision,
    CheckItemError,
    CommitAnswer,
    EventBatchAnswer,
    EventResult,
    Granted,
    OnUnavailable,
    Reservation,
    ReserveResult,
    WhoAmI,
)

Event = Mapping[str, Any]

#: Threads a sync client sends its attempts on (made as needed): httpx's timeouts bound each
#: phase of a request (connect, send, every read), so only a wait on another thread holds an
#: attempt to one deadline in all, as the TypeScript client's does.
ATTEMPT_THREADS = 64


def _timed_out(call: Call) -> httpx.TimeoutException:
    return httpx.TimeoutException(f"no answer within {call.timeout:g} s")


class UsageGate:
    """usage-gate's client. Calls raise ``UsageGateError`` (``UsageGateUnavailableError`` when
    usage-gate cannot be reached) except where a result is documented instead: a check's
    fallback, and an enforced event's or hold's ``refused``."""

    def __init__(self, *, http_client: httpx.Client | None = None, **options: Unpack[Options]) -> None:
        """``base_url`` and ``api_key``, and the ``Options`` (timeouts, ``on_unavailable``,
        retries); ``http_client`` for your own (proxies, TLS), used as it is."""
        self._core = Core(**options)
        self._http = http_client or httpx.Client(follow_redirects=False)
        self._attempts = concurrent.futures.ThreadPoolExecutor(ATTEMPT_THREADS, thread_name_prefix="usage-gate")
        self.limits, self.overrides, self.rules, self.webhook_endpoints = _admin.namespaces(self, self._core)

    def close(self) -> None:
        self._attempts.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(
        self,
        customer_id: str,
        *,
        cost: int | None = None,
        feature: str | None = None,
        quantity: int | None = None,
        in_use: int | None = None,
        seats: int | None = None,
        subject: str | None = None,
        timeout: float | None = None,
        on_unavailable: OnUnavailable | None = None,
    ) -> CheckDecision:
        """May the customer keep using the product (and, with ``cost`` in minor units, spend
        that much more)? With ``feature``: does its plan include it (and, with ``in_use``, is
        there room for ``quantity`` more)? With ``seats``: are they within its user count? With
        ``subject`` (a user, a workspace): within usage-gate's per-subject rules too?
        Never retried: when usage-gate cannot be reached within ``timeout`` (or answers 5xx),
        ``on_unavailable`` decides."""
        plan = {"feature": feature, "quantity": quantity, "in_use": in_use, "seats": seats, "subject": subject}
        try:
            return self._json(self._core.check_call(customer_id, cost, timeout, plan))
        except UsageGateUnavailableError as error:
            return self._core.fallback(error, on_unavailable, customer_id, cost)

    def check_many(
        self,
        customers: Iterable[str | Mapping[str, Any]],
        *,
        timeout: float | None = None,
        on_unavailable: OnUnavailable | None = None,
    ) -> list[CheckDecision | CheckItemError]:
        """Up to 1,000 customers (ids, or ``{"id", "cost", "feature", "quantity", "in_use",
        "seats"}``, all but ``id`` optional), answered in order; an invalid item gets its own
        error in its place."""
        items = check_items(customers)
        try:
            return self._json(self._core.check_many_call(items, timeout))
        except UsageGateUnavailableError as error:
            return [self._core.fallback(error, on_unavailable, i.get("id"), i.get("cost")) for i in items]

    def send_event(self, event: Event, *, enforce: bool = False, timeout: float | None = None) -> EventResult:
        """One usage event, stored before it is acknowledged. Retried on 502/503/504 (after
        ``Retry-After``), connection errors and timeouts with the same ``event_id`` (a UUID is
        generated when absent), so a retry is at worst a ``duplicate``. With ``enforce``, an
        event that does not fit is ``refused`` (nothing stored) with the ``decision``. Other 4xx
        raise ``UsageGateError`` (409 ``conflict`` or ``event_dead`` among them)."""
        call = self._core.event_call(event, enforce, timeout)
        try:
            return event_result(call, self._send(call).body)
        except (UsageGateError, RetriedError) as error:
            refused = limit_exceeded(error)
            if refused:
                return cast(EventResult, {"event_id": call.body["event_id"], **refused})
            raise _unwrap(error) from None

    def send_events(
        self, events: Iterable[Event], *, enforce: bool = False, timeout: float | None = None
    ) -> EventBatchAnswer:
        """Up to 1,000 events stored together: ``{"results": [...]}``, one per event in order."""
        return self._json(self._core.events_call(events, enforce, timeout))

    def reserve(
        self,
        customer_id: str,
        *,
        amount: int | None = None,
        code: str | None = None,
        value: float | None = None,
        ttl_ms: int | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> ReserveResult:
        """Holds ``amount`` (minor units), or what an event of ``code`` and ``value`` would cost,
        for ``ttl_ms`` (default 60 s): ``status`` ``granted`` (with the hold), or ``refused``
        (nothing held). Retried like events, every attempt with the same ``Idempotency-Key``
        (``idempotency_key``, or a new UUID per call): a retry after a lost answer gets the hold
        the lost attempt made, never a second one."""
        try:
            call = self._core.reserve_call(customer_id, amount, code, value, ttl_ms, timeout, idempotency_key)
            granted = self._json(call)
            return cast(ReserveResult, {"status": "granted", **granted})
        except UsageGateError as error:
            refused = limit_exceeded(error)
            if refused:
                return cast(ReserveResult, refused)
            raise

    def commit(self, reservation_id: str, events: Iterable[Event], *, timeout: float | None = None) -> CommitAnswer:
        """Stores what the work used and closes the hold, in one transaction (never refused: the
        work happened). Retried like events; a retry that finds the hold committed by the
        attempt whose answer was lost reports each event ``duplicate``."""
        call = self._core.commit_call(reservation_id, events, timeout)
        try:
            return self._send(call).body
        except RetriedError as error:
            if error.error.status == 409:
                return self._core.committed_before(call, reservation_id)  # type: ignore[return-value]
            raise error.error from None

    def release(self, reservation_id: str, *, timeout: float | None = None) -> None:
        """Gives the hold's room back. A retry that finds it released counts as released."""
        try:
            self._send(self._core.release_call(reservation_id, timeout))
        except RetriedError as error:
            if error.error.status != 404:
                raise error.error from None

    def reservation(self, customer_id: str, **ask: Unpack[HoldAsk]) -> "Hold":
        """A hold for the ``with`` block, asked for as ``reserve`` is (``amount=`` or ``code=`` and
        ``value=``, ``ttl_ms=``, ``timeout=``, ``idempotency_key=``): record what the work used
        with ``hold.record(event)``; leaving the block commits it, an exception releases the hold.
        A refused hold raises ``UsageLimitExceeded`` on entry (the block does not run)."""
        return Hold(self, customer_id, dict(ask))

    def reservations(self, customer_id: str, *, timeout: float | None = None) -> list[Reservation]:
        """The customer's open holds (scope ``admin``)."""
        path = f"/v1/customers/{segment(customer_id, 'customer_id')}/reservations"
        return self._json(self._core.read(path, timeout, lambda b: b["reservations"]))

    def audit(
        self,
        *,
        customer: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        since: Any = None,
        until: Any = None,
        page_size: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[AuditRecord]:
        """The audit log, newest first, each page fetched as the iteration reaches it."""
        filters = {
            "customer": customer,
            "action": action,
            "actor": actor,
            "since": since,
            "until": until,
            "limit": page_size,
        }
        cursor = None
        while True:
            page = self._json(self._core.audit_call(filters, cursor, timeout))
            yield from page["records"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def whoami(self, *, timeout: float | None = None) -> WhoAmI:
        return self._json(self._core.read("/v1/whoami", timeout))

    def _json(self, call: Call) -> Any:
        try:
            return call.extract(self._send(call).body)
        except RetriedError as error:
            raise error.error from None

    def _send(self, call: Call) -> Answer:
        steps = self._core.attempts(call)
        next(steps)
        while True:
            try:
                time.sleep(steps.send(self._attempt(call)))
            except StopIteration as done:
                return done.value
            next(steps)

    def _attempt(self, call: Call) -> Outcome:
        """One attempt, answered within ``call.timeout``; past it, the request is left to end
        on its thread by httpx's own (per-phase) timeouts."""
        attempt = self._attempts.submit(self._http.send, self._core.request(self._http, call))
        try:
            return attempt.result(timeout=call.timeout)
        except httpx.TransportError as error:
            return error
        except concurrent.futures.TimeoutError:
            attempt.cancel()
            return _timed_out(call)


class AsyncUsageGate:
    """``UsageGate`` for asyncio: the same calls, awaited (``audit`` is an async iterator,
    ``reservation`` an async context manager)."""

    def __init__(self, *, http_client: httpx.AsyncClient | None = None, **options: Unpack[Options]) -> None:
        """``base_url`` and ``api_key``, and the ``Options`` (timeouts, ``on_unavailable``,
        retries); ``http_client`` for your own (proxies, TLS), used as it is."""
        self._core = Core(**options)
        self._http = http_client or httpx.AsyncClient(follow_redirects=False)
        self.limits, self.overrides, self.rules, self.webhook_endpoints = _admin.namespaces(self, self._core)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def check(
        self,
        customer_id: str,
        *,
        cost: int | None = None,
        feature: str | None = None,
        quantity: int | None = None,
        in_use: int | None = None,
        seats: int | None = None,
        subject: str | None = None,
        timeout: float | None = None,
        on_unavailable: OnUnavailable | None = None,
    ) -> CheckDecision:
        plan = {"feature": feature, "quantity": quantity, "in_use": in_use, "seats": seats, "subject": subject}
        try:
            return await self._json(self._core.check_call(customer_id, cost, timeout, plan))
        except UsageGateUnavailableError as error:
            return self._core.fallback(error, on_unavailable, customer_id, cost)

    async def check_many(
        self,
        customers: Iterable[str | Mapping[str, Any]],
        *,
        timeout: float | None = None,
        on_unavailable: OnUnavailable | None = None,
    ) -> list[CheckDecision | CheckItemError]:
        items = check_items(customers)
        try:
            return await self._json(self._core.check_many_call(items, timeout))
        except UsageGateUnavailableError as error:
            return [self._core.fallback(error, on_unavailable, i.get("id"), i.get("cost")) for i in items]

    async def send_event(self, event: Event, *, enforce: bool = False, timeout: float | None = None) -> EventResult:
        call = self._core.event_call(event, enforce, timeout)
        try:
            return event_result(call, (await self._send(call)).body)
        except (UsageGateError, RetriedError) as error:
            refused = limit_exceeded(error)
            if refused:
                return cast(EventResult, {"event_id": call.body["event_id"], **refused})
            raise _unwrap(error) from None

    async def send_events(
        self, events: Iterable[Event], *, enforce: bool = False, timeout: float | None = None
    ) -> EventBatchAnswer:
        return await self._json(self._core.events_call(events, enforce, timeout))

    async def reserve(
        self,
        customer_id: str,
        *,
        amount: int | None = None,
        code: str | None = None,
        value: float | None = None,
        ttl_ms: int | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> ReserveResult:
        try:
            call = self._core.reserve_call(customer_id, amount, code, value, ttl_ms, timeout, idempotency_key)
            granted = await self._json(call)
            return cast(ReserveResult, {"status": "granted", **granted})
        except UsageGateError as error:
            refused = limit_exceeded(error)
            if refused:
                return cast(ReserveResult, refused)
            raise

    async def commit(
        self, reservation_id: str, events: Iterable[Event], *, timeout: float | None = None
    ) -> CommitAnswer:
        call = self._core.commit_call(reservation_id, events, timeout)
        try:
            return (await self._send(call)).body
        except RetriedError as error:
            if error.error.status == 409:
                return self._core.committed_before(call, reservation_id)  # type: ignore[return-value]
            raise error.error from None

    async def release(self, reservation_id: str, *, timeout: float | None = None) -> None:
        try:
            await self._send(self._core.release_call(reservation_id, timeout))
        except RetriedError as error:
            if error.error.status != 404:
                raise error.error from None

    def reservation(self, customer_id: str, **ask: Unpack[HoldAsk]) -> "AsyncHold":
        return AsyncHold(self, customer_id, dict(ask))

    async def reservations(self, customer_id: str, *, timeout: float | None = None) -> list[Reservation]:
        path = f"/v1/customers/{segment(customer_id, 'customer_id')}/reservations"
        return await self._json(self._core.read(path, timeout, lambda b: b["reservations"]))

    async def audit(
        self,
        *,
        customer: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        since: Any = None,
        until: Any = None,
        page_size: int | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[AuditRecord]:
        filters = {
            "customer": customer,
            "action": action,
            "actor": actor,
            "since": since,
            "until": until,
            "limit": page_size,
        }
        cursor = None
        while True:
            page = await self._json(self._core.audit_call(filters, cursor, timeout))
            for record in page["records"]:
                yield record
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def whoami(self, *, timeout: float | None = None) -> WhoAmI:
        return await self._json(self._core.read("/v1/whoami", timeout))

    async def _json(self, call: Call) -> Any:
        try:
            return call.extract((await self._send(call)).body)
        except RetriedError as error:
            raise error.error from None

    async def _send(self, call: Call) -> Answer:
        steps = self._core.attempts(call)
        next(steps)
        while True:
            outcome: Outcome
            try:
                # httpx's timeout bounds each phase; the attempt as a whole gets one deadline.
                outcome = await asyncio.wait_for(self._http.send(self._core.request(self._http, call)), call.timeout)
            except httpx.TransportError as error:
                outcome = error
            except asyncio.TimeoutError:
                outcome = _timed_out(call)
            try:
                await asyncio.sleep(steps.send(outcome))
            except StopIteration as done:
                return done.value
            next(steps)


class _HoldState:
    """What both kinds of hold keep: the ask, the hold granted, the usage recorded."""

    def __init__(self, client: Any, customer_id: str, ask: dict[str, Any]) -> None:
        self._client, self.customer_id, self._ask = client, customer_id, ask
        self._events: list[dict[str, Any]] = []
        #: The hold as granted (``id``, ``amount``, ``expires_at``, ``decision``).
        self.reservation: Granted | None = None
        #: The commit's answer, once the block has ended without an exception.
        self.committed: CommitAnswer | None = None

    def record(self, event: Event) -> None:
        """Usage the work had, committed when the block ends (the hold's customer's by default)."""
        self._events.append(dict(event))

    def _granted(self, result: ReserveResult) -> None:
        if result["status"] == "refused":
            raise UsageLimitExceeded(
                f"customer {self.customer_id} has no room for this hold",
                decision=result["decision"],
                problem=result["problem"],
            )
        self.reservation = {k: v for k, v in result.items() if k != "status"}  # type: ignore[assignment]

    def _id(self) -> str:
        assert self.reservation is not None, "the hold was not entered"
        return self.reservation["id"]

    def _usage(self) -> list[dict[str, Any]]:
        return for_customer(self._events, self.customer_id)


class Hold(_HoldState):
    """``with ug.reservation(customer, amount=...) as hold:`` (see ``UsageGate.reservation``)."""

    def __enter__(self) -> Self:
        self._granted(self._client.reserve(self.customer_id, **self._ask))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.committed = self._client.commit(self._id(), self._usage())
            return
        # The block's own error is the one the caller needs; a failed release only delays the
        # room's return until the hold's ttl.
        try:
            self._client.release(self._id())
        except UsageGateError:
            pass


class AsyncHold(_HoldState):
    """``async with ug.reservation(customer, amount=...) as hold:``."""

    async def __aenter__(self) -> Self:
        self._granted(await self._client.reserve(self.customer_id, **self._ask))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.committed = await self._client.commit(self._id(), self._usage())
            return
        try:
            await self._client.release(self._id())
        except UsageGateError:
            pass


def _unwrap(error: BaseException) -> BaseException:
    return error.error if isinstance(error, RetriedError) else error
