// The client against a real usage-gate (the demo: the service, its BillaBear simulator and demo
// customers, a throwaway database), with a fault-injecting proxy where a test needs one.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { after, before, test } from "node:test";

import { UsageGate, UsageGateError, UsageGateUnavailableError, WebhookVerificationError, verifyWebhook } from "../dist/index.js";
import { faultProxy } from "./support/faults.mjs";
import { CUSTOMERS, poll, startUsageGate } from "./support/service.mjs";

let service;
let ug;
before(async () => {
  service = await startUsageGate();
  ug = new UsageGate({ baseUrl: service.url, apiKey: service.apiKey, timeoutMs: 2_000 });
});
after(async () => service?.close());

/** A client through a fault proxy, counting the requests it sends. */
async function faulty(plan, options = {}) {
  const proxy = await faultProxy(Number(new URL(service.url).port), plan);
  const client = new UsageGate({ baseUrl: proxy.url, apiKey: service.apiKey, retryBaseDelayMs: 10, ...options });
  return { proxy, client };
}

async function storedEvents(eventId) {
  const { body } = await service.admin(`/v1/outbox?limit=500`);
  return body.events.filter((e) => e.event_id === eventId);
}

test("a blocked customer is not allowed, with the service's reasons and field names", async () => {
  const blocked = await ug.check(CUSTOMERS.umbrella);
  assert.equal(blocked.allowed, false);
  assert.equal(blocked.status, "blocked");
  assert.ok(blocked.reasons.includes("disable_limit_exceeded"), blocked.reasons.join());
  assert.equal(blocked.estimate.amount, 15000);
  assert.equal(blocked.client_fallback, undefined);

  const costly = await ug.check(CUSTOMERS.acme, { cost: 9000 });
  assert.equal(costly.allowed, false);
  assert.deepEqual(costly.reasons.includes("would_exceed_disable_limit"), true);

  const many = await ug.checkMany([CUSTOMERS.acme, { id: CUSTOMERS.umbrella }, "not-a-uuid"]);
  assert.deepEqual(many.slice(0, 2).map((d) => d.allowed), [true, false]);
  assert.equal(many[2].error.field, "customers[2].id");
});

test("a check asks of the plan: a feature, what the caller has in use, seats", async () => {
  // The demo's plans: Acme has sso, 25 projects and 10 users; Globex no sso.
  const sso = await ug.check(CUSTOMERS.globex, { feature: "sso" });
  assert.equal(sso.allowed, false);
  assert.ok(sso.reasons.includes("feature_not_in_plan"), sso.reasons.join());
  assert.deepEqual(sso.feature, { code: "sso", included: false });

  const projects = await ug.check(CUSTOMERS.acme, { feature: "projects", inUse: 24, quantity: 2 });
  assert.deepEqual(projects.reasons, ["feature_limit_reached"]);
  assert.deepEqual(projects.feature, { code: "projects", included: true, limit: 25, used: 24, remaining: 1 });
  const seats = await ug.check(CUSTOMERS.acme, { seats: 10 });
  assert.deepEqual([seats.allowed, seats.seats], [true, { requested: 10, limit: 10 }]);

  const many = await ug.checkMany([
    { id: CUSTOMERS.acme, feature: "projects", inUse: 25 },
    { id: CUSTOMERS.acme, seats: 11 },
    { id: CUSTOMERS.acme, inUse: 1 },
  ]);
  assert.deepEqual(many[0].reasons, ["feature_limit_reached"]);
  assert.deepEqual(many[1].reasons, ["seats_exceeded"]);
  assert.equal(many[2].error.field, "customers[2].in_use");
});

test("a bad request is a UsageGateError with the problem's fields, and is not retried", async () => {
  const { proxy, client } = await faulty([]);
  try {
    await assert.rejects(
      client.sendEvent({ customer: CUSTOMERS.acme, code: "API CALLS", value: 1 }),
      (error) => {
        assert.ok(error instanceof UsageGateError && !(error instanceof UsageGateUnavailableError));
        assert.equal(error.status, 400);
        assert.equal(error.code, "invalid_request");
        assert.deepEqual(error.errors.map((e) => e.field), ["code"]);
        assert.match(error.requestId, /^[0-9a-f-]{36}$/);
        return true;
      },
    );
    assert.equal(proxy.requests.length, 1, "one request: a 400 is not retried");
    await assert.rejects(ug.check("../v1/audit"), TypeError);
  } finally {
    await proxy.close();
  }
});

test("an enforced event that does not fit is refused with the decision, and nothing is stored", async () => {
  const eventId = `ts-enforced-${randomUUID()}`;
  const refused = await ug.sendEvent({ event_id: eventId, customer: CUSTOMERS.globex, code: "api_calls", value: 900 }, { enforce: true });
  assert.equal(refused.status, "refused");
  assert.equal(refused.reason, "usage_limit_exceeded");
  assert.equal(refused.decision.allowed, false);
  assert.ok(refused.decision.reasons.includes("would_exceed_disable_limit"));
  assert.equal(refused.problem.status, 402);
  assert.deepEqual(await storedEvents(eventId), []);

  const fits = await ug.sendEvent({ customer: CUSTOMERS.globex, code: "api_calls", value: 100 }, { enforce: true });
  assert.equal(fits.status, "accepted");
  assert.match(fits.event_id, /^[0-9a-f-]{36}$/, "an event_id is generated");
  assert.equal((await storedEvents(fits.event_id)).length, 1);
  // The answer's decision counts the event it answers for.
  assert.equal(fits.decision.estimate.pending, 100);
});

test("events: a repeat is a duplicate, a batch answers each event", async () => {
  const event = { event_id: `ts-${randomUUID()}`, customer: CUSTOMERS.acme, code: "api_calls", value: 1 };
  assert.equal((await ug.sendEvent(event)).status, "accepted");
  assert.equal((await ug.sendEvent(event)).status, "duplicate");
  const { results } = await ug.sendEvents([event, { customer: CUSTOMERS.acme, code: "api_calls", value: 2 }, { customer: CUSTOMERS.acme, code: "", value: 2 }]);
  assert.deepEqual(results.map((r) => r.status), ["duplicate", "accepted", "invalid"]);
});

test("a connection dropped mid-request is retried with the same event_id: one event stored", async () => {
  const { proxy, client } = await faulty(["drop-response"]);
  try {
    const result = await client.sendEvent({ customer: CUSTOMERS.acme, code: "api_calls", value: 3 });
    // The first attempt was stored; its answer was lost; the retry is the duplicate it is.
    assert.equal(result.status, "duplicate");
    assert.equal(proxy.requests.length, 2);
    assert.equal((await storedEvents(result.event_id)).length, 1);

  } finally {
    await proxy.close();
  }
  const batch = await faulty(["drop-response"]);
  try {
    const { results } = await batch.client.sendEvents([{ customer: CUSTOMERS.acme, code: "api_calls", value: 4 }]);
    assert.equal(results[0].status, "duplicate");
    assert.equal((await storedEvents(results[0].event_id)).length, 1);
  } finally {
    await batch.proxy.close();
  }
});

test("a 503 is retried after its Retry-After; a hold whose answer was lost is asked again with its key: one hold", async () => {
  const { proxy, client } = await faulty(["reply-503"]);
  try {
    const result = await client.sendEvent({ customer: CUSTOMERS.acme, code: "api_calls", value: 5 });
    assert.equal(result.status, "accepted");
    assert.equal(proxy.requests.length, 2);
    const waited = proxy.requests[1].at - proxy.requests[0].at;
    assert.ok(waited >= 1_000, `retried after ${waited} ms, before Retry-After`);
  } finally {
    await proxy.close();
  }
  const holds = async () => (await service.admin(`/v1/customers/${CUSTOMERS.stark}/reservations`)).body.reservations;
  const before = (await holds()).length;
  const dropped = await faulty(["drop-response"]);
  try {
    const held = await dropped.client.reserve(CUSTOMERS.stark, { amount: 1 });
    assert.equal(held.status, "granted");
    assert.equal(dropped.proxy.requests.length, 2, "asked again after the lost answer");
    const open = await holds();
    assert.equal(open.length, before + 1, "held once");
    assert.ok(open.some((h) => h.id === held.id));
    await ug.release(held.id);
  } finally {
    await dropped.proxy.close();
  }
});

test("a hold committed, and one released", async () => {
  const held = await ug.reserve(CUSTOMERS.acme, { amount: 500, ttl_ms: 60_000 });
  assert.equal(held.status, "granted");
  assert.equal(held.decision.estimate.reserved >= 500, true);
  const committed = await ug.commit(held.id, [{ customer: CUSTOMERS.acme, code: "api_calls", value: 120 }]);
  assert.equal(committed.reservation_id, held.id);
  assert.deepEqual(committed.results.map((r) => r.status), ["accepted"]);
  assert.equal((await storedEvents(committed.results[0].event_id)).length, 1);

  const other = await ug.reserve(CUSTOMERS.acme, { code: "api_calls", value: 10 });
  assert.equal(other.status, "granted");
  await ug.release(other.id);
  const open = (await ug.reservations(CUSTOMERS.acme)).map((r) => r.id);
  assert.deepEqual(open, [], "nothing left open");
  await assert.rejects(ug.release(other.id), (e) => e.status === 404 && e.code === "not_found");

  const tooMuch = await ug.reserve(CUSTOMERS.umbrella, { amount: 1 });
  assert.equal(tooMuch.status, "refused");
  assert.equal(tooMuch.decision.allowed, false);
});

test("withReservation commits what the work reports, releases when it throws, and does not run refused work", async () => {
  const done = await ug.withReservation(CUSTOMERS.acme, { amount: 300 }, async (hold) => {
    assert.equal(hold.amount, 300);
    return { events: [{ code: "api_calls", value: 42 }], value: "the answer" };
  });
  assert.equal(done.status, "committed");
  assert.equal(done.value, "the answer");
  assert.equal(done.commit.customer_id, CUSTOMERS.acme);
  assert.equal(done.commit.results[0].status, "accepted");

  let heldId;
  await assert.rejects(
    ug.withReservation(CUSTOMERS.acme, { amount: 300 }, async (hold) => {
      heldId = hold.id;
      throw new Error("the model timed out");
    }),
    /the model timed out/,
  );
  const open = await ug.reservations(CUSTOMERS.acme);
  assert.ok(heldId && !open.some((r) => r.id === heldId), "released");

  let ran = false;
  const refused = await ug.withReservation(CUSTOMERS.umbrella, { amount: 1 }, async () => {
    ran = true;
    return { events: [] };
  });
  assert.equal(refused.status, "refused");
  assert.equal(ran, false);
});

test("rules: created, listed, changed and deleted", async () => {
  const rule = await ug.rules.create({
    scope: { customer: CUSTOMERS.stark }, measure: { cost: {} }, limit: 5000,
    window: { calendar: "day", time_zone: "Europe/Paris" }, mode: "hard", description: "$50 a day",
  });
  assert.deepEqual(rule.thresholds, [80, 100]);
  assert.deepEqual((await ug.rules.list({ customerId: CUSTOMERS.stark })).map((r) => r.id), [rule.id]);
  const changed = await ug.rules.change(rule.id, { limit: 7500, description: null });
  assert.equal(changed.limit, 7500);
  assert.equal(changed.description, null);
  assert.equal((await ug.rules.get(rule.id)).limit, 7500);
  await assert.rejects(ug.rules.change(rule.id, { thresholds: [100, 80] }), (e) => e.status === 422 && e.errors[0].field === "thresholds");
  await ug.rules.delete(rule.id);
  assert.deepEqual(await ug.rules.list({ customerId: CUSTOMERS.stark }), []);
});

test("rules: a subject is judged by its own rule on checks and enforced events", async () => {
  const rule = await ug.rules.create({
    scope: { customer: CUSTOMERS.stark }, measure: { metric: "api_calls" }, limit: 2,
    window: { rolling_s: 3600 }, mode: "hard", per_subject: true,
  });
  try {
    const bob = () => ({ customer: CUSTOMERS.stark, code: "api_calls", value: 1, subject: "ts-bob" });
    for (let i = 0; i < 2; i++) assert.equal((await ug.sendEvent(bob(), { enforce: true })).status, "accepted");
    const refused = await ug.sendEvent(bob(), { enforce: true });
    assert.equal(refused.status, "refused");
    assert.equal(refused.problem.limit.kind, "rule");
    let decision;
    for (const deadline = Date.now() + 5000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 50))) {
      decision = await ug.check(CUSTOMERS.stark, { subject: "ts-bob" });
      if (decision.rules?.[0]?.used === 2) break;
    }
    assert.equal(decision.allowed, false);
    assert.deepEqual(decision.reasons, ["rule_limit_exceeded"]);
    assert.equal((await ug.check(CUSTOMERS.stark, { subject: "ts-alice" })).allowed, true);
  } finally {
    await ug.rules.delete(rule.id);
  }
});

test("admin: limits, overrides and the audit log paged as an iterator", async () => {
  const limit = await ug.limits.create(CUSTOMERS.stark, { amount: 5000, action: "WARNING" });
  assert.equal(limit.action, "WARNING");
  assert.ok((await ug.limits.list(CUSTOMERS.stark)).some((l) => l.id === limit.id));
  await ug.limits.delete(CUSTOMERS.stark, limit.id);
  assert.ok(!(await ug.limits.list(CUSTOMERS.stark)).some((l) => l.id === limit.id));
  await assert.rejects(ug.limits.create(CUSTOMERS.stark, { amount: -1, action: "WARNING" }), (e) => e.status === 422 && e.errors[0].field === "amount");

  const expires = new Date(Date.now() + 3_600_000).toISOString();
  const raised = await ug.overrides.create(CUSTOMERS.umbrella, { effect: "raise", amount: 20_000, reason: "ts client test", expires_at: expires });
  assert.equal(raised.active, true);
  assert.equal((await ug.check(CUSTOMERS.umbrella)).allowed, true);
  assert.ok((await ug.overrides.list({ customerId: CUSTOMERS.umbrella, active: true })).some((o) => o.id === raised.id));
  await ug.overrides.end(CUSTOMERS.umbrella, raised.id, "done");
  assert.equal((await ug.check(CUSTOMERS.umbrella)).allowed, false);

  const seen = [];
  for await (const record of ug.audit({ pageSize: 2 })) seen.push(record);
  assert.ok(seen.length >= 5, `${seen.length} records`);
  assert.equal(new Set(seen.map((r) => r.id)).size, seen.length, "no record twice across pages");
  assert.deepEqual(seen.map((r) => r.id), [...seen.map((r) => r.id)].sort((a, b) => b - a), "newest first");
  assert.ok(seen.some((r) => r.action === "usage_limit.create"));
  const mine = [];
  for await (const record of ug.audit({ customer: CUSTOMERS.umbrella, action: "override.create" })) mine.push(record);
  assert.deepEqual(mine.map((r) => r.target_id), [raised.id]);
});

test("a webhook from a real delivery verifies, also with either secret after a rotation; a forged one does not", async () => {
  const deliveries = [];
  const receiver = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      deliveries.push({ headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(204).end();
    });
  });
  await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
  try {
    const endpoint = await ug.webhookEndpoints.create({
      url: `http://127.0.0.1:${receiver.address().port}/hooks`,
      event_types: ["customer.usage.blocked", "customer.usage.recovered"],
    });
    assert.match(endpoint.secret, /^whsec_/);
    // Stark's first decision is recorded, then an override blocks it: a transition.
    await ug.check(CUSTOMERS.stark);
    const expires = new Date(Date.now() + 3_600_000).toISOString();
    const block = await ug.overrides.create(CUSTOMERS.stark, { effect: "block", reason: "webhook test", expires_at: expires });
    await ug.check(CUSTOMERS.stark);
    const first = await poll("the blocked message", () => deliveries[0]);
    const message = await verifyWebhook(endpoint.secret, first.headers, first.body);
    assert.equal(message.type, "customer.usage.blocked");
    assert.equal(message.data.customer_id, CUSTOMERS.stark);
    assert.equal(message.data.previous_status, "ok");

    await assert.rejects(verifyWebhook(endpoint.secret, first.headers, Buffer.from(first.body.toString().replace("blocked", "ok"))), WebhookVerificationError);
    await assert.rejects(verifyWebhook(endpoint.secret, first.headers, first.body, { now: new Date(Date.now() + 600_000) }), /more than 300 s/);
    await assert.rejects(verifyWebhook(endpoint.secret, { ...first.headers, "webhook-signature": undefined }, first.body), /missing/);

    const { secret } = await ug.webhookEndpoints.rotateSecret(endpoint.id);
    await ug.overrides.end(CUSTOMERS.stark, block.id, "done");
    await ug.check(CUSTOMERS.stark);
    const second = await poll("the recovered message", () => deliveries[1]);
    assert.equal(second.headers["webhook-signature"].split(" ").length, 2, "signed with both secrets");
    for (const key of [secret, endpoint.secret, [endpoint.secret, secret]]) {
      assert.equal((await verifyWebhook(key, second.headers, second.body)).type, "customer.usage.recovered");
    }
    const unrelated = "whsec_" + Buffer.from(randomUUID()).toString("base64");
    await assert.rejects(verifyWebhook(unrelated, second.headers, second.body), /no signature matches/);

    const [listed] = await ug.webhookEndpoints.messages(endpoint.id, { status: "delivered" });
    assert.equal(listed.status, "delivered");
  } finally {
    receiver.close();
  }
});

test("a 500 falls back for a check, and an event answered 500 is not sent again", async () => {
  const broken = await faulty(["reply-500", "reply-500"], { onUnavailable: "allow" });
  try {
    const allowed = await broken.client.check(CUSTOMERS.acme);
    assert.equal(allowed.allowed, true);
    assert.equal(allowed.client_fallback, true);
    await assert.rejects(broken.client.sendEvent({ customer: CUSTOMERS.acme, code: "api_calls", value: 1 }), (e) => e instanceof UsageGateUnavailableError && e.status === 500);
    assert.equal(broken.proxy.requests.length, 2, "one request each: a 500 is not retried");
  } finally {
    await broken.proxy.close();
  }
});

test("a timeout is one deadline for the whole attempt", async () => {
  const dripping = await faulty(["drip"], { timeoutMs: 300, onUnavailable: "deny" });
  try {
    const started = Date.now();
    const late = await dripping.client.check(CUSTOMERS.acme);
    assert.equal(late.client_fallback, true);
    assert.ok(Date.now() - started < 600, `answered after ${Date.now() - started} ms`);
  } finally {
    await dripping.proxy.close();
  }
});

// Last: it stops the service.
test("when usage-gate is slow or gone, checks answer as the caller chose and events fail after retrying", async () => {
  const slow = await faulty(["hang"], { timeoutMs: 200, onUnavailable: "deny" });
  try {
    const denied = await slow.client.check(CUSTOMERS.acme);
    assert.equal(denied.allowed, false);
    assert.equal(denied.client_fallback, true);
    assert.match(denied.error, /no answer within 200 ms/);
  } finally {
    await slow.proxy.close();
  }

  await service.stop();
  const gone = (onUnavailable) => new UsageGate({ baseUrl: service.url, apiKey: service.apiKey, onUnavailable, retries: 2, retryBaseDelayMs: 10 });
  const allowed = await gone("allow").check(CUSTOMERS.umbrella, { cost: 5 });
  assert.deepEqual(
    { allowed: allowed.allowed, status: allowed.status, fallback: allowed.fallback, client_fallback: allowed.client_fallback, reasons: allowed.reasons, cost: allowed.cost },
    { allowed: true, status: "unknown", fallback: true, client_fallback: true, reasons: ["usage_gate_unavailable"], cost: 5 },
  );
  assert.equal((await gone("deny").check(CUSTOMERS.acme)).allowed, false);
  assert.deepEqual((await gone("allow").checkMany([CUSTOMERS.acme, CUSTOMERS.umbrella])).map((d) => d.allowed), [true, true]);
  assert.equal((await gone("throw").check(CUSTOMERS.acme, { onUnavailable: "allow" })).allowed, true, "per call");
  await assert.rejects(gone("throw").check(CUSTOMERS.acme), (e) => e instanceof UsageGateUnavailableError && /ECONNREFUSED/.test(e.message));
  await assert.rejects(gone("allow").sendEvent({ customer: CUSTOMERS.acme, code: "api_calls", value: 1 }), UsageGateUnavailableError);
});

test("a caller's AbortSignal ends a call at once: no retry, no fallback, the signal's reason", async () => {
  const aborted = (error) => error?.name === "AbortError";
  const hanging = await faulty(["hang", "hang", "hang", "hang"], { onUnavailable: "allow" });
  try {
    let started = Date.now();
    await assert.rejects(hanging.client.check(CUSTOMERS.acme, { signal: AbortSignal.timeout(100), timeoutMs: 5_000 }), (e) => e?.name === "TimeoutError");
    assert.ok(Date.now() - started < 1_000, "the check stopped when its caller's signal fired");
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    started = Date.now();
    await assert.rejects(hanging.client.sendEvent({ customer: CUSTOMERS.acme, code: "api_calls", value: 1 }, { signal: controller.signal, timeoutMs: 5_000 }), aborted);
    assert.ok(Date.now() - started < 1_000);
    assert.equal(hanging.proxy.requests.length, 2, "one request each: an aborted call is not retried");
  } finally {
    await hanging.proxy.close();
  }
  // Waiting out a Retry-After (1 s) ends at the abort too.
  const refused = await faulty(["reply-503"]);
  try {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 200);
    const started = Date.now();
    await assert.rejects(refused.client.sendEvent({ customer: CUSTOMERS.acme, code: "api_calls", value: 1 }, { signal: controller.signal }), aborted);
    assert.ok(Date.now() - started < 900, `stopped waiting after ${Date.now() - started} ms`);
    assert.equal(refused.proxy.requests.length, 1);
  } finally {
    await refused.proxy.close();
  }
});
