"""The admin calls (scope ``admin``), shared by both clients: each returns what the client's
``_json`` returns, a value for ``UsageGate`` and an awaitable for ``AsyncUsageGate``."""

from typing import Any

from ._core import Core, segment


def _customer(customer_id: str) -> str:
    return f"/v1/customers/{segment(customer_id, 'customer_id')}"


def _rule(rule_id: str) -> str:
    return f"/v1/rules/{segment(rule_id, 'rule_id')}"


def _endpoint(endpoint_id: str) -> str:
    return f"/v1/webhook-endpoints/{segment(endpoint_id, 'endpoint_id')}"


class Limits:
    """Usage limits in BillaBear, through usage-gate (every change audited)."""

    def __init__(self, client: Any, core: Core) -> None:
        self._client, self._core = client, core

    def list(self, customer_id: str, *, timeout: float | None = None) -> Any:
        """The customer's limits as BillaBear has them now: ``UsageLimit`` dicts."""
        return self._client._json(
            self._core.read(f"{_customer(customer_id)}/usage-limits", timeout, lambda b: b["data"])
        )

    def create(self, customer_id: str, *, amount: int, action: str, timeout: float | None = None) -> Any:
        """A ``WARNING`` or ``DISABLE`` limit of ``amount`` minor units: the ``UsageLimit``."""
        call = self._core.change(
            "POST", f"{_customer(customer_id)}/usage-limits", timeout, {"amount": amount, "action": action}
        )
        return self._client._json(call)

    def delete(self, customer_id: str, limit_id: str, *, timeout: float | None = None) -> Any:
        path = f"{_customer(customer_id)}/usage-limits/{segment(limit_id, 'limit_id')}"
        return self._client._json(self._core.change("DELETE", path, timeout, extract=lambda b: None))


class Overrides:
    """Operators' bounded exceptions to a customer's decision."""

    def __init__(self, client: Any, core: Core) -> None:
        self._client, self._core = client, core

    def create(
        self,
        customer_id: str,
        *,
        effect: str,
        reason: str,
        expires_at: Any,
        amount: int | None = None,
        timeout: float | None = None,
    ) -> Any:
        """``effect`` ``allow``, ``block`` or ``raise`` (with ``amount``) until ``expires_at``
        (RFC 3339 or a datetime): the ``OverrideRecord``."""
        at = expires_at.isoformat() if hasattr(expires_at, "isoformat") else expires_at
        body = {"effect": effect, "reason": reason, "expires_at": at}
        if amount is not None:
            body["amount"] = amount
        return self._client._json(self._core.change("POST", f"{_customer(customer_id)}/overrides", timeout, body))

    def list(
        self,
        *,
        customer_id: str | None = None,
        active: bool | None = None,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> Any:
        """A customer's overrides, or everyone's, newest first."""
        path = f"{_customer(customer_id)}/overrides" if customer_id else "/v1/overrides"
        call = self._core.read(path, timeout, lambda b: b["overrides"], {"active": active, "limit": limit})
        return self._client._json(call)

    def end(
        self, customer_id: str, override_id: str, *, reason: str | None = None, timeout: float | None = None
    ) -> Any:
        path = f"{_customer(customer_id)}/overrides/{segment(override_id, 'override_id')}"
        return self._client._json(
            self._core.change("DELETE", path, timeout, extract=lambda b: None, query={"reason": reason})
        )


class Rules:
    """usage-gate's own limit rules (every change audited): ``scope`` ``{"customer": ID}``,
    ``{"plan": PLAN_ID}`` or ``{"all": True}``; ``measure`` ``{"cost": {}}`` or ``{"metric": CODE}``;
    ``window`` ``{"calendar": "day", "time_zone": "Europe/Paris"}``, ``{"rolling_s": 3600}`` or
    ``{"billing_period": {}}``."""

    def __init__(self, client: Any, core: Core) -> None:
        self._client, self._core = client, core

    def create(
        self,
        *,
        scope: dict[str, Any],
        measure: dict[str, Any],
        limit: int,
        window: dict[str, Any],
        mode: str,
        per_subject: bool | None = None,
        subject_limits: dict[str, int] | None = None,
        thresholds: list[int] | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The ``RuleRecord``."""
        body = {"scope": scope, "measure": measure, "limit": limit, "window": window, "mode": mode}
        optional = (
            ("per_subject", per_subject),
            ("subject_limits", subject_limits),
            ("thresholds", thresholds),
            ("description", description),
        )
        body.update({k: v for k, v in optional if v is not None})
        return self._client._json(self._core.change("POST", "/v1/rules", timeout, body))

    def list(
        self,
        *,
        customer_id: str | None = None,
        plan_id: str | None = None,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Oldest first: every rule, or those scoped to the customer or the plan."""
        query = {"customer": customer_id, "plan": plan_id, "limit": limit}
        return self._client._json(self._core.read("/v1/rules", timeout, lambda b: b["rules"], query))

    def get(self, rule_id: str, *, timeout: float | None = None) -> Any:
        return self._client._json(self._core.read(_rule(rule_id), timeout))

    def change(self, rule_id: str, *, timeout: float | None = None, **fields: Any) -> Any:
        """Sets ``limit``, ``mode``, ``thresholds``, ``subject_limits`` or ``description``
        (``None`` clears the description): the changed ``RuleRecord``."""
        return self._client._json(self._core.change("PATCH", _rule(rule_id), timeout, fields))

    def delete(self, rule_id: str, *, timeout: float | None = None) -> Any:
        return self._client._json(self._core.change("DELETE", _rule(rule_id), timeout, extract=lambda b: None))


class WebhookEndpoints:
    """usage-gate's own signed webhooks."""

    def __init__(self, client: Any, core: Core) -> None:
        self._client, self._core = client, core

    def create(
        self,
        *,
        url: str,
        event_types: list[str] | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The endpoint with its ``secret`` (``whsec_…``), shown only here."""
        body = {
            k: v for k, v in (("url", url), ("event_types", event_types), ("description", description)) if v is not None
        }
        return self._client._json(self._core.change("POST", "/v1/webhook-endpoints", timeout, body))

    def list(self, *, timeout: float | None = None) -> Any:
        return self._client._json(self._core.read("/v1/webhook-endpoints", timeout, lambda b: b["endpoints"]))

    def get(self, endpoint_id: str, *, timeout: float | None = None) -> Any:
        return self._client._json(self._core.read(_endpoint(endpoint_id), timeout))

    def delete(self, endpoint_id: str, *, timeout: float | None = None) -> Any:
        return self._client._json(self._core.change("DELETE", _endpoint(endpoint_id), timeout, extract=lambda b: None))

    def rotate_secret(self, endpoint_id: str, *, timeout: float | None = None) -> Any:
        """A new secret (``{"secret"}``); the old one keeps signing beside it for 24 h."""
        return self._client._json(self._core.change("POST", f"{_endpoint(endpoint_id)}/rotate-secret", timeout))

    def enable(self, endpoint_id: str, *, timeout: float | None = None) -> Any:
        return self._client._json(
            self._core.change("POST", f"{_endpoint(endpoint_id)}/enable", timeout, retry="idempotent")
        )

    def messages(
        self, endpoint_id: str, *, status: str | None = None, limit: int | None = None, timeout: float | None = None
    ) -> Any:
        """Messages with every attempt, newest first (``status``: pending, delivered, failed)."""
        call = self._core.read(
            f"{_endpoint(endpoint_id)}/messages", timeout, lambda b: b["messages"], {"status": status, "limit": limit}
        )
        return self._client._json(call)

    def resend(self, endpoint_id: str, message_id: str, *, timeout: float | None = None) -> Any:
        path = f"{_endpoint(endpoint_id)}/messages/{segment(message_id, 'message_id')}/resend"
        return self._client._json(self._core.change("POST", path, timeout, extract=lambda b: None, retry="idempotent"))


def namespaces(client: Any, core: Core) -> tuple[Limits, Overrides, Rules, WebhookEndpoints]:
    return Limits(client, core), Overrides(client, core), Rules(client, core), WebhookEndpoints(client, core)
