"""usage-gate's requests and answers as ``TypedDict``s, with the service's own JSON field names.

Each class named like a schema in usage-gate's ``/openapi.json`` has exactly that schema's
fields, required where the document requires them (``tests/test_types.py`` holds them to the
running service's document). The classes at the end are what the client adds.
"""

from typing import Any, Literal

from typing_extensions import NotRequired, TypedDict

Status = Literal["ok", "warning", "blocked", "unknown"]
Source = Literal["cache", "upstream", "stale", "fallback"]
LimitAction = Literal["WARNING", "DISABLE"]
OnUnavailable = Literal["allow", "deny", "throw"]


class Estimate(TypedDict):
    amount: int
    currency: str
    billabear: int
    pending: int
    pending_events: int
    reserved: int
    approximate: bool
    as_of: str


class LimitView(TypedDict):
    id: str
    amount: int
    action: LimitAction
    exceeded: bool
    remaining: int


class OverrideView(TypedDict):
    id: str
    effect: str
    expires_at: str
    amount: NotRequired[int | None]


class FeatureView(TypedDict):
    """What the plan says of the feature a check asked about."""

    code: str
    included: bool
    limit: NotRequired[int | None]
    used: NotRequired[int | None]
    remaining: NotRequired[int | None]
    #: The window usage-gate counts the feature over (absent when ``in_use`` was given).
    window: NotRequired[str | None]
    resets_at: NotRequired[str | None]


class SeatsView(TypedDict):
    """The seats a check asked for and the plan's user count (None: the plan sets none)."""

    requested: int
    limit: NotRequired[int | None]


class RuleView(TypedDict):
    """One of usage-gate's own rules as a check or a refusal judged it."""

    id: str
    #: ``{"cost": {}}`` or ``{"metric": CODE}``, as the rule is written.
    measure: dict[str, Any]
    #: ``{"calendar": ...}``, ``{"rolling_s": S}`` or ``{"billing_period": {}}``.
    window: dict[str, Any]
    mode: str
    limit: int
    used: float
    subject: NotRequired[str | None]
    resets_at: NotRequired[str | None]
    #: ``rule_limit_exceeded``, ``would_exceed_rule_limit`` or ``soft_limit_exceeded``.
    reason: NotRequired[str | None]


class Decision(TypedDict):
    customer_id: str
    allowed: bool
    status: Status
    reasons: list[str]
    limits: list[LimitView]
    fallback: bool
    source: Source
    estimate: NotRequired[Estimate | None]
    cost: NotRequired[int | None]
    feature: NotRequired[FeatureView | None]
    seats: NotRequired[SeatsView | None]
    #: usage-gate's rules that bind the customer (a check), or that refused (a write).
    rules: NotRequired[list[RuleView]]
    customer_status: NotRequired[str | None]
    override: NotRequired[OverrideView | None]
    would_block: NotRequired[bool | None]
    as_of: NotRequired[str | None]
    age_ms: NotRequired[int | None]


class FieldError(TypedDict):
    field: str
    message: str


class CheckItemError(TypedDict):
    error: FieldError
    customer_id: NotRequired[Any]


class CheckBatchResponse(TypedDict):
    decisions: list[Decision | CheckItemError]


class RefusedBy(TypedDict, total=False):
    """The limit that refused an enforced event or a hold: ``kind`` ``"usage"`` (``id``,
    ``amount``, ``estimate``), ``"feature"`` (``code``, ``limit``, ``used``, ``window``,
    ``resets_at``) or ``"rule"`` (a :class:`RuleView`'s fields)."""

    kind: Literal["usage", "feature", "rule"]
    id: str
    amount: int
    estimate: int
    code: str
    limit: int
    used: int
    window: str
    resets_at: str


class Problem(TypedDict):
    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: NotRequired[list[FieldError]]
    decision: NotRequired[Decision | None]
    customer_id: NotRequired[str | None]
    reasons: NotRequired[list[str] | None]
    usage_status: NotRequired[Status | None]
    limit_exists: NotRequired[bool | None]
    #: ``usage_limit_exceeded``: the limit that refused it.
    limit: NotRequired[RefusedBy | None]


class NewEvent(TypedDict):
    event_id: str
    code: str
    value: float
    customer: NotRequired[str]
    subscription: NotRequired[str]
    properties: NotRequired[dict[str, Any] | None]
    #: Who inside the customer the usage is for (usage-gate's per-subject rules).
    subject: NotRequired[str]


class EventAnswer(TypedDict):
    status: str
    event_id: str
    decision: NotRequired[Decision | None]


class BatchItemResult(TypedDict):
    status: str
    event_id: NotRequired[Any]
    reason: NotRequired[str | None]
    decision: NotRequired[Decision | None]
    errors: NotRequired[list[FieldError]]


class EventBatchAnswer(TypedDict):
    results: list[BatchItemResult]


class NewReservation(TypedDict, total=False):
    amount: int
    code: str
    value: float
    ttl_ms: int
    subject: str


class Granted(TypedDict):
    id: str
    customer_id: str
    amount: int
    expires_at: str
    decision: Decision


class CommitResult(TypedDict):
    event_id: str
    status: str


class CommitAnswer(TypedDict):
    reservation_id: str
    customer_id: str
    expired: bool
    results: list[CommitResult]


class Reservation(TypedDict):
    id: str
    customer_id: str
    amount: int
    created_at: str
    expires_at: str
    created_by: str
    code: NotRequired[str | None]
    value: NotRequired[float | None]
    closed_at: NotRequired[str | None]
    closed_as: NotRequired[str | None]


class ReservationList(TypedDict):
    reservations: list[Reservation]


class NewLimitBody(TypedDict):
    amount: int
    action: str


class UsageLimit(TypedDict):
    id: str
    amount: int
    action: LimitAction


class LimitList(TypedDict):
    data: list[UsageLimit]


class NewOverride(TypedDict):
    effect: Literal["allow", "block", "raise"]
    reason: str
    expires_at: str
    amount: NotRequired[int]


class OverrideRecord(TypedDict):
    id: str
    customer_id: str
    effect: str
    reason: str
    created_at: str
    created_by: str
    expires_at: str
    active: bool
    amount: NotRequired[int | None]
    ended_at: NotRequired[str | None]
    ended_by: NotRequired[str | None]
    ended_as: NotRequired[str | None]
    end_reason: NotRequired[str | None]


class OverrideList(TypedDict):
    overrides: list[OverrideRecord]


class NewRule(TypedDict):
    scope: dict[str, Any]
    measure: dict[str, Any]
    limit: int
    window: dict[str, Any]
    mode: Literal["hard", "soft"]
    per_subject: NotRequired[bool]
    subject_limits: NotRequired[dict[str, int]]
    thresholds: NotRequired[list[int]]
    description: NotRequired[str | None]


class RulePatch(TypedDict, total=False):
    limit: int
    mode: Literal["hard", "soft"]
    thresholds: list[int]
    subject_limits: dict[str, int]
    description: str | None


class RuleRecord(TypedDict):
    id: str
    scope: dict[str, Any]
    measure: dict[str, Any]
    limit: int
    window: dict[str, Any]
    mode: str
    per_subject: bool
    subject_limits: dict[str, int]
    thresholds: list[int]
    created_at: str
    created_by: str
    updated_at: str
    updated_by: str
    description: NotRequired[str | None]


class RuleList(TypedDict):
    rules: list[RuleRecord]


class NewWebhookEndpoint(TypedDict):
    url: str
    event_types: NotRequired[list[str]]
    description: NotRequired[str]


class Endpoint(TypedDict):
    id: str
    url: str
    created_at: str
    created_by: str
    event_types: NotRequired[list[str] | None]
    description: NotRequired[str | None]
    disabled_at: NotRequired[str | None]
    disabled_reason: NotRequired[str | None]
    previous_secret_until: NotRequired[str | None]


class Created(Endpoint):
    """An endpoint as created: with its signing secret, shown only this once."""

    secret: str


class EndpointList(TypedDict):
    endpoints: list[Endpoint]


class Rotated(TypedDict):
    secret: str


class MessageAttempt(TypedDict):
    attempted_at: str
    status_code: int | None
    error: str | None
    duration_ms: int


class Message(TypedDict):
    id: str
    event_type: str
    status: str
    created_at: str
    payload: dict[str, Any]
    attempts: list[MessageAttempt]
    customer_id: NotRequired[str | None]
    delivered_at: NotRequired[str | None]
    next_attempt_at: NotRequired[str | None]


class MessageList(TypedDict):
    messages: list[Message]


class AuditRecord(TypedDict):
    id: int
    occurred_at: str
    actor: str
    action: str
    outcome: str
    details: dict[str, Any]
    customer_id: NotRequired[str | None]
    target_id: NotRequired[str | None]
    upstream_status: NotRequired[int | None]
    request_id: NotRequired[str | None]


class AuditPage(TypedDict):
    records: list[AuditRecord]
    next_cursor: NotRequired[str | None]


class WhoAmI(TypedDict):
    name: str
    scopes: list[str]


# What the client adds.


class CheckDecision(Decision, total=False):
    """A check's answer; when usage-gate could not be reached and ``on_unavailable`` is
    ``allow`` or ``deny``, the client's own: ``client_fallback: True`` (with ``fallback: True``,
    ``source: "fallback"``, status ``unknown``, reason ``usage_gate_unavailable``) and ``error``."""

    client_fallback: bool
    error: str


class EventResult(TypedDict):
    """A single event's outcome: ``accepted`` or ``duplicate`` (stored), or with ``enforce``,
    ``refused`` (a 402: nothing stored; ``reason``, ``decision`` and ``problem`` say why)."""

    event_id: str
    status: Literal["accepted", "duplicate", "refused"]
    decision: NotRequired[Decision | None]
    reason: NotRequired[str]
    problem: NotRequired[Problem]


class ReserveResult(TypedDict):
    """A hold's outcome: ``granted`` (with the hold's fields) or ``refused`` (a 402: nothing held)."""

    status: Literal["granted", "refused"]
    decision: Decision
    id: NotRequired[str]
    customer_id: NotRequired[str]
    amount: NotRequired[int]
    expires_at: NotRequired[str]
    reason: NotRequired[str]
    problem: NotRequired[Problem]


class UsageMessage(TypedDict):
    """``customer.usage.*``: the decision as a check answers it, plus ``previous_status``."""

    type: Literal[
        "customer.usage.near_limit", "customer.usage.warning", "customer.usage.blocked", "customer.usage.recovered"
    ]
    timestamp: str
    data: dict[str, Any]


class OverrideExpiredMessage(TypedDict):
    """``customer.override.expired``: ``data`` is ``{customer_id, override}``."""

    type: Literal["customer.override.expired"]
    timestamp: str
    data: dict[str, Any]


class EventDeadMessage(TypedDict):
    """``event.dead``: ``data`` is the event (``event_id``, ``customer_id`` or
    ``subscription_id``, ``code``, ``value``, ``attempts``, ``received_at``, ``error``,
    ``upstream_status``)."""

    type: Literal["event.dead"]
    timestamp: str
    data: dict[str, Any]


class FeatureLimitMessage(TypedDict):
    """``feature_limit.reached``: ``data`` is ``{customer_id, code, limit, used, window,
    window_start, resets_at}``; ``feature_limit.reset``: ``{customer_id, code, limit,
    window_start, window_end}``."""

    type: Literal["feature_limit.reached", "feature_limit.reset"]
    timestamp: str
    data: dict[str, Any]


WebhookMessage = UsageMessage | OverrideExpiredMessage | EventDeadMessage | FeatureLimitMessage

#: The classes that are usage-gate's schemas, by the schema's name.
SCHEMAS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        Estimate,
        FeatureView,
        SeatsView,
        RuleView,
        LimitView,
        OverrideView,
        Decision,
        FieldError,
        CheckItemError,
        CheckBatchResponse,
        Problem,
        NewEvent,
        EventAnswer,
        BatchItemResult,
        EventBatchAnswer,
        NewReservation,
        Granted,
        CommitResult,
        CommitAnswer,
        Reservation,
        ReservationList,
        NewLimitBody,
        UsageLimit,
        LimitList,
        NewOverride,
        OverrideRecord,
        OverrideList,
        NewRule,
        RulePatch,
        RuleRecord,
        RuleList,
        NewWebhookEndpoint,
        Endpoint,
        Created,
        EndpointList,
        Rotated,
        MessageAttempt,
        Message,
        MessageList,
        AuditRecord,
        AuditPage,
        WhoAmI,
    )
}
