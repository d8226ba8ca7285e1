"""usage-gate's Python client: ``UsageGate`` (sync) and ``AsyncUsageGate``, on httpx.

Decisions and results are dicts with usage-gate's own JSON field names (``usage_gate.types``).
"""

from ._client import AsyncHold, AsyncUsageGate, Hold, UsageGate
from ._core import __version__
from ._errors import UsageGateError, UsageGateUnavailableError, UsageLimitExceeded, WebhookVerificationError
from ._webhooks import verify_webhook

__all__ = [
    "AsyncHold",
    "AsyncUsageGate",
    "Hold",
    "UsageGate",
    "UsageGateError",
    "UsageGateUnavailableError",
    "UsageLimitExceeded",
    "WebhookVerificationError",
    "__version__",
    "verify_webhook",
]
