"""The sync client against a real usage-gate, with a fault-injecting proxy where a test needs one."""

import base64
import datetime
import http.server
import os
import threading
import time
import uuid
from typing import ClassVar

import pytest
from support import ACME, GLOBEX, STARK, UMBRELLA, Service, poll

from usage_gate import (
    UsageGate,
    UsageGateError,
    UsageGateUnavailableError,
    UsageLimitExceeded,
    WebhookVerificationError,
    verify_webhook,
)


@pytest.fixture
def ug(service):
    with UsageGate(base_url=service.url, api_key=service.api_key, timeout=2.0) as client:
        yield client


def through(proxy, service, **options):
    return UsageGate(base_url=proxy.url, api_key=service.api_key, retry_base_delay=0.01, **options)


def in_an_hour() -> str:
    return (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).isoformat()


def test_a_blocked_customer_is_not_allowed_with_the_services_reasons(ug):
    blocked = ug.check(UMBRELLA)
    assert (blocked["allowed"], blocked["status"]) == (False, "blocked")
    assert "disable_limit_exceeded" in blocked["reasons"]
    assert blocked["estimate"]["amount"] == 15000
    assert "client_fallback" not in blocked
    assert "would_exceed_disable_limit" in ug.check(ACME, cost=9000)["reasons"]
    many = ug.check_many([ACME, {"id": UMBRELLA}, "not-a-uuid"])
    assert [d.get("allowed") for d in many[:2]] == [True, False]
    assert many[2]["error"]["field"] == "customers[2].id"


def test_a_check_asks_of_the_plan_a_feature_what_is_in_use_and_seats(ug):
    # The demo's plans: Acme has sso, 25 projects and 10 users; Globex no sso.
    sso = ug.check(GLOBEX, feature="sso")
    assert (sso["allowed"], sso["feature"]) == (False, {"code": "sso", "included": False})
    assert "feature_not_in_plan" in sso["reasons"]
    projects = ug.check(ACME, feature="projects", in_use=24, quantity=2)
    assert projects["reasons"] == ["feature_limit_reached"]
    assert projects["feature"] == {"code": "projects", "included": True, "limit": 25, "used": 24, "remaining": 1}
    assert ug.check(ACME, seats=10)["seats"] == {"requested": 10, "limit": 10}
    many = ug.check_many([{"id": ACME, "seats": 11}, {"id": ACME, "in_use": 1}])
    assert many[0]["reasons"] == ["seats_exceeded"]
    assert many[1]["error"]["field"] == "customers[1].in_use"


def test_a_bad_request_is_an_error_with_the_problems_fields_and_is_not_retried(service, faults):
    proxy = faults([])
    with pytest.raises(UsageGateError) as caught:
        through(proxy, service).send_event({"customer": ACME, "code": "API CALLS", "value": 1})
    error = caught.value
    assert not isinstance(error, UsageGateUnavailableError)
    assert (error.status, error.code, [e["field"] for e in error.errors]) == (400, "invalid_request", ["code"])
    assert len(error.request_id) == 36
    assert len(proxy.requests) == 1, "one request: a 400 is not retried"
    with pytest.raises(ValueError):
        through(proxy, service).check("../v1/audit")


def test_an_enforced_event_that_does_not_fit_is_refused_with_the_decision(ug, service):
    event_id = f"py-enforced-{uuid.uuid4()}"
    refused = ug.send_event({"event_id": event_id, "customer": GLOBEX, "code": "api_calls", "value": 900}, enforce=True)
    assert (refused["status"], refused["reason"]) == ("refused", "usage_limit_exceeded")
    assert refused["decision"]["allowed"] is False
    assert refused["problem"]["status"] == 402
    assert service.stored(event_id) == []
    fits = ug.send_event({"customer": GLOBEX, "code": "api_calls", "value": 50}, enforce=True)
    assert fits["status"] == "accepted"
    uuid.UUID(fits["event_id"])  # generated
    assert len(service.stored(fits["event_id"])) == 1
    assert fits["decision"]["estimate"]["pending"] >= 50, "the answer counts the event"


def test_a_repeat_is_a_duplicate_and_a_batch_answers_each_event(ug):
    event = {"event_id": f"py-{uuid.uuid4()}", "customer": ACME, "code": "api_calls", "value": 1}
    assert ug.send_event(event)["status"] == "accepted"
    assert ug.send_event(event)["status"] == "duplicate"
    results = ug.send_events(
        [event, {"customer": ACME, "code": "api_calls", "value": 2}, {"customer": ACME, "code": "", "value": 2}]
    )["results"]
    assert [r["status"] for r in results] == ["duplicate", "accepted", "invalid"]


def test_a_connection_dropped_mid_request_is_retried_with_the_same_event_id(service, faults):
    proxy = faults(["drop-response"])
    result = through(proxy, service).send_event({"customer": ACME, "code": "api_calls", "value": 3})
    assert result["status"] == "duplicate", "stored by the first attempt, whose answer was lost"
    assert len(proxy.requests) == 2
    assert len(service.stored(result["event_id"])) == 1
    batch = faults(["drop-response"])
    results = through(batch, service).send_events([{"customer": ACME, "code": "api_calls", "value": 4}])["results"]
    assert results[0]["status"] == "duplicate"
    assert len(service.stored(results[0]["event_id"])) == 1


def test_a_503_is_retried_after_retry_after_and_a_lost_holds_retry_gets_the_same_hold(service, faults, ug):
    proxy = faults(["reply-503"])
    assert (
        through(proxy, service).send_event({"customer": ACME, "code": "api_calls", "value": 5})["status"] == "accepted"
    )
    assert len(proxy.requests) == 2
    waited = proxy.requests[1][3] - proxy.requests[0][3]
    assert waited >= 1.0, f"retried after {waited:.3f} s, before Retry-After"
    before = len(ug.reservations(STARK))
    dropped = faults(["drop-response"])
    held = through(dropped, service).reserve(STARK, amount=1)
    assert held["status"] == "granted"
    assert len(dropped.requests) == 2, "asked again after the lost answer"
    open_holds = ug.reservations(STARK)
    assert len(open_holds) == before + 1, "held once"
    assert held["id"] in [h["id"] for h in open_holds]
    ug.release(held["id"])


def test_a_hold_committed_and_one_released(ug, service):
    held = ug.reserve(ACME, amount=500, ttl_ms=60_000)
    assert held["status"] == "granted" and held["decision"]["estimate"]["reserved"] >= 500
    committed = ug.commit(held["id"], [{"customer": ACME, "code": "api_calls", "value": 120}])
    assert committed["reservation_id"] == held["id"]
    assert [r["status"] for r in committed["results"]] == ["accepted"]
    assert len(service.stored(committed["results"][0]["event_id"])) == 1
    other = ug.reserve(ACME, code="api_calls", value=10)
    assert other["status"] == "granted"
    ug.release(other["id"])
    assert ug.reservations(ACME) == []
    with pytest.raises(UsageGateError) as caught:
        ug.release(other["id"])
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    refused = ug.reserve(UMBRELLA, amount=1)
    assert refused["status"] == "refused" and refused["decision"]["allowed"] is False


def test_the_reservation_block_commits_what_it_recorded_and_releases_on_an_exception(ug):
    with ug.reservation(ACME, amount=300) as hold:
        assert hold.reservation["amount"] == 300
        hold.record({"code": "api_calls", "value": 42})
    assert hold.committed["customer_id"] == ACME
    assert [r["status"] for r in hold.committed["results"]] == ["accepted"]

    with pytest.raises(RuntimeError, match="the model timed out"), ug.reservation(ACME, amount=300) as failing:
        raise RuntimeError("the model timed out")
    assert failing.reservation["id"] not in [r["id"] for r in ug.reservations(ACME)]

    ran = False
    with pytest.raises(UsageLimitExceeded) as caught, ug.reservation(UMBRELLA, amount=1):
        ran = True
    assert not ran and caught.value.decision["allowed"] is False


def test_admin_limits_overrides_and_the_audit_log_as_an_iterator(ug):
    limit = ug.limits.create(STARK, amount=5000, action="WARNING")
    assert limit["action"] == "WARNING"
    assert limit["id"] in [listed["id"] for listed in ug.limits.list(STARK)]
    ug.limits.delete(STARK, limit["id"])
    assert limit["id"] not in [listed["id"] for listed in ug.limits.list(STARK)]
    with pytest.raises(UsageGateError) as caught:
        ug.limits.create(STARK, amount=-1, action="WARNING")
    assert caught.value.status == 422 and caught.value.errors[0]["field"] == "amount"

    raised = ug.overrides.create(
        UMBRELLA, effect="raise", amount=20_000, reason="py client test", expires_at=in_an_hour()
    )
    assert raised["active"] and ug.check(UMBRELLA)["allowed"] is True
    assert raised["id"] in [o["id"] for o in ug.overrides.list(customer_id=UMBRELLA, active=True)]
    ug.overrides.end(UMBRELLA, raised["id"], reason="done")
    assert ug.check(UMBRELLA)["allowed"] is False

    seen = list(ug.audit(page_size=2))
    ids = [r["id"] for r in seen]
    assert len(ids) >= 5 and len(set(ids)) == len(ids) and ids == sorted(ids, reverse=True)
    assert "usage_limit.create" in {r["action"] for r in seen}
    mine = list(ug.audit(customer=UMBRELLA, action="override.create"))
    assert [r["target_id"] for r in mine] == [raised["id"]]


def test_rules_are_created_listed_changed_and_deleted(ug):
    rule = ug.rules.create(
        scope={"customer": STARK},
        measure={"cost": {}},
        limit=5000,
        window={"calendar": "day", "time_zone": "Europe/Paris"},
        mode="hard",
        description="$50 a day",
    )
    assert rule["thresholds"] == [80, 100] and rule["window"]["time_zone"] == "Europe/Paris"
    assert [r["id"] for r in ug.rules.list(customer_id=STARK)] == [rule["id"]]
    changed = ug.rules.change(rule["id"], limit=7500, description=None)
    assert (changed["limit"], changed["description"]) == (7500, None)
    assert ug.rules.get(rule["id"])["limit"] == 7500
    with pytest.raises(UsageGateError) as caught:
        ug.rules.change(rule["id"], thresholds=[100, 80])
    assert caught.value.status == 422 and caught.value.errors[0]["field"] == "thresholds"
    ug.rules.delete(rule["id"])
    assert ug.rules.list(customer_id=STARK) == []


def test_a_subject_is_judged_by_its_own_rule_on_checks_and_enforced_events(ug):
    rule = ug.rules.create(
        scope={"customer": STARK},
        measure={"metric": "api_calls"},
        limit=2,
        window={"rolling_s": 3600},
        mode="hard",
        per_subject=True,
    )
    try:
        bob = {"customer": STARK, "code": "api_calls", "value": 1, "subject": "py-bob"}
        assert [ug.send_event(dict(bob), enforce=True)["status"] for _ in range(2)] == ["accepted"] * 2
        refused = ug.send_event(dict(bob), enforce=True)
        assert refused["status"] == "refused"
        assert (refused["problem"]["limit"]["kind"], refused["problem"]["limit"]["subject"]) == ("rule", "py-bob")
        decision = poll(
            "the check counts bob's events",
            lambda: (d := ug.check(STARK, subject="py-bob"))["rules"][0]["used"] == 2 and d,
        )
        assert decision["allowed"] is False and decision["reasons"] == ["rule_limit_exceeded"]
        assert ug.check(STARK, subject="py-alice")["allowed"] is True
    finally:
        ug.rules.delete(rule["id"])


class _Receiver(http.server.BaseHTTPRequestHandler):
    deliveries: ClassVar[list] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        self.deliveries.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_webhook_from_a_real_delivery_verifies_with_either_secret_after_a_rotation(ug):
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    deliveries = _Receiver.deliveries = []
    try:
        endpoint = ug.webhook_endpoints.create(
            url=f"http://127.0.0.1:{receiver.server_port}/hooks",
            event_types=["customer.usage.blocked", "customer.usage.recovered"],
        )
        assert endpoint["secret"].startswith("whsec_")
        ug.check(STARK)  # its first decision is recorded; the override below is a transition
        block = ug.overrides.create(STARK, effect="block", reason="webhook test", expires_at=in_an_hour())
        ug.check(STARK)
        headers, body = poll("the blocked message", lambda: deliveries and deliveries[0])
        message = verify_webhook(endpoint["secret"], headers, body)
        assert message["type"] == "customer.usage.blocked"
        assert (message["data"]["customer_id"], message["data"]["previous_status"]) == (STARK, "ok")
        with pytest.raises(WebhookVerificationError):
            verify_webhook(endpoint["secret"], headers, body.replace(b"blocked", b"ok"))
        with pytest.raises(WebhookVerificationError, match="from now"):
            verify_webhook(endpoint["secret"], headers, body, now=int(headers["webhook-timestamp"]) + 600)
        with pytest.raises(WebhookVerificationError, match="missing"):
            verify_webhook(
                endpoint["secret"], {k: v for k, v in headers.items() if k.lower() != "webhook-signature"}, body
            )

        new = ug.webhook_endpoints.rotate_secret(endpoint["id"])["secret"]
        ug.overrides.end(STARK, block["id"], reason="done")
        ug.check(STARK)
        headers, body = poll("the recovered message", lambda: len(deliveries) > 1 and deliveries[1])
        lowered = {k.lower(): v for k, v in headers.items()}
        assert len(lowered["webhook-signature"].split(" ")) == 2, "signed with both secrets"
        for secret in (new, endpoint["secret"], [endpoint["secret"], new]):
            assert verify_webhook(secret, headers, body)["type"] == "customer.usage.recovered"
        unrelated = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        with pytest.raises(WebhookVerificationError, match="no signature matches"):
            verify_webhook(unrelated, headers, body)
        assert [m["status"] for m in ug.webhook_endpoints.messages(endpoint["id"], status="delivered")][:1] == [
            "delivered"
        ]
    finally:
        receiver.shutdown()


def test_a_500_falls_back_for_a_check_and_an_event_is_not_sent_again(service, faults):
    broken = faults(["reply-500", "reply-500"])
    allowed = through(broken, service, on_unavailable="allow").check(ACME)
    assert (allowed["allowed"], allowed["client_fallback"]) == (True, True)
    assert "HTTP 500" in allowed["error"] or "internal" in allowed["error"], allowed["error"]
    with pytest.raises(UsageGateUnavailableError) as raised:
        through(broken, service).send_event({"customer": ACME, "code": "api_calls", "value": 1})
    assert raised.value.status == 500
    assert len(broken.requests) == 2, "one request each: a 500 is not retried"


def test_a_timeout_is_one_deadline_for_the_whole_attempt(service, faults):
    dripping = faults(["drip"])
    started = time.monotonic()
    late = through(dripping, service, timeout=0.3, on_unavailable="deny").check(ACME)
    elapsed = time.monotonic() - started
    assert (late["allowed"], late["client_fallback"]) == (False, True)
    assert "no answer within 0.3 s" in late["error"]
    assert elapsed < 0.6, f"answered after {elapsed:.2f} s, past its 0.3 s deadline"


def test_when_usage_gate_is_slow_or_stopped_checks_answer_as_chosen_and_events_fail_after_retrying(service, faults):
    slow = faults(["hang"])
    denied = through(slow, service, timeout=0.2, on_unavailable="deny").check(ACME)
    assert (denied["allowed"], denied["client_fallback"]) == (False, True)
    assert "no answer within 0.2 s" in denied["error"]

    stopped = Service()
    stopped.close()

    def gone(mode):
        return UsageGate(
            base_url=stopped.url, api_key=service.api_key, on_unavailable=mode, retries=2, retry_base_delay=0.01
        )

    allowed = gone("allow").check(UMBRELLA, cost=5)
    assert {k: allowed[k] for k in ("allowed", "status", "fallback", "client_fallback", "reasons", "cost")} == {
        "allowed": True,
        "status": "unknown",
        "fallback": True,
        "client_fallback": True,
        "reasons": ["usage_gate_unavailable"],
        "cost": 5,
    }
    assert gone("deny").check(ACME)["allowed"] is False
    assert [d["allowed"] for d in gone("allow").check_many([ACME, UMBRELLA])] == [True, True]
    assert gone("throw").check(ACME, on_unavailable="allow")["allowed"] is True, "per call"
    with pytest.raises(UsageGateUnavailableError, match="ConnectError"):
        gone("throw").check(ACME)
    with pytest.raises(UsageGateUnavailableError):
        gone("allow").send_event({"customer": ACME, "code": "api_calls", "value": 1})
