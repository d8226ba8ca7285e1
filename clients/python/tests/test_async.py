"""AsyncUsageGate against the real usage-gate: the same behaviour, awaited."""

import asyncio
import uuid

import pytest
from support import ACME, UMBRELLA, Service

from usage_gate import AsyncUsageGate, UsageGateUnavailableError, UsageLimitExceeded


def run(coroutine):
    return asyncio.run(coroutine)


def test_checks_events_and_refusals(service):
    async def scenario():
        async with AsyncUsageGate(base_url=service.url, api_key=service.api_key, timeout=2.0) as ug:
            blocked, allowed = await asyncio.gather(ug.check(UMBRELLA), ug.check(ACME))
            assert (blocked["allowed"], allowed["allowed"]) == (False, True)
            assert [d["allowed"] for d in await ug.check_many([ACME, UMBRELLA])] == [True, False]
            assert (await ug.check(ACME, feature="projects", in_use=25))["reasons"] == ["feature_limit_reached"]
            event = {"event_id": f"py-async-{uuid.uuid4()}", "customer": ACME, "code": "api_calls", "value": 1}
            assert (await ug.send_event(event))["status"] == "accepted"
            assert (await ug.send_events([event]))["results"][0]["status"] == "duplicate"
            refused = await ug.send_event({"customer": UMBRELLA, "code": "api_calls", "value": 1}, enforce=True)
            assert refused["status"] == "refused" and refused["decision"]["allowed"] is False
            assert service.stored(refused["event_id"]) == []
            assert (await ug.whoami())["name"] == "demo"

    run(scenario())


def test_retries_keep_the_event_id(service, faults):
    proxy = faults(["drop-response", "reply-503"])

    async def scenario():
        async with AsyncUsageGate(base_url=proxy.url, api_key=service.api_key, retry_base_delay=0.01) as ug:
            result = await ug.send_event({"customer": ACME, "code": "api_calls", "value": 2})
            assert result["status"] == "duplicate"
            assert len(service.stored(result["event_id"])) == 1
            assert [fault for fault, _ in proxy.log] == ["drop-response", "reply-503", "pass"]

    run(scenario())


def test_the_reservation_block_and_the_audit_iterator(service):
    async def scenario():
        async with AsyncUsageGate(base_url=service.url, api_key=service.api_key) as ug:
            async with ug.reservation(ACME, amount=200) as hold:
                hold.record({"code": "api_calls", "value": 7})
            assert hold.committed["results"][0]["status"] == "accepted"
            with pytest.raises(ValueError):
                async with ug.reservation(ACME, amount=200) as failing:
                    raise ValueError("work failed")
            assert failing.reservation["id"] not in [r["id"] for r in await ug.reservations(ACME)]
            with pytest.raises(UsageLimitExceeded):
                async with ug.reservation(UMBRELLA, amount=1):
                    pass
            records = [r async for r in ug.audit(action="reservation.commit", page_size=1)]
            assert len(records) >= 1 and all(r["action"] == "reservation.commit" for r in records)

    run(scenario())


def test_a_stopped_service_gets_the_chosen_fallback():
    stopped = Service()
    stopped.close()

    async def scenario():
        async with AsyncUsageGate(
            base_url=stopped.url, api_key="k", on_unavailable="allow", retries=1, retry_base_delay=0.01
        ) as ug:
            decision = await ug.check(ACME)
            assert (decision["allowed"], decision["client_fallback"]) == (True, True)
            with pytest.raises(UsageGateUnavailableError):
                await ug.check(ACME, on_unavailable="throw")
            with pytest.raises(UsageGateUnavailableError):
                await ug.send_event({"customer": ACME, "code": "api_calls", "value": 1})

    run(scenario())


def test_a_timeout_is_one_deadline_for_the_whole_attempt(service, faults):
    dripping = faults(["drip"])

    async def scenario():
        async with AsyncUsageGate(base_url=dripping.url, api_key=service.api_key, timeout=0.3) as ug:
            loop = asyncio.get_running_loop()
            started = loop.time()
            late = await ug.check(ACME, on_unavailable="allow")
            assert (late["allowed"], late["client_fallback"]) == (True, True)
            assert loop.time() - started < 0.6, "answered past its deadline"

    run(scenario())
