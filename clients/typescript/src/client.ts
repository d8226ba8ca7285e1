import { UsageGateError, UsageGateUnavailableError } from "./errors.js";
import type {
  AuditFilter,
  AuditPage,
  AuditRecord,
  CheckDecision,
  CheckItemError,
  CommitAnswer,
  CreatedWebhookEndpoint,
  Decision,
  EventBatchAnswer,
  EventInput,
  EventResult,
  Granted,
  NewLimit,
  NewOverride,
  NewReservation,
  NewRule,
  NewWebhookEndpoint,
  OnUnavailable,
  OverrideRecord,
  Problem,
  Reservation,
  ReserveResult,
  Rotated,
  RulePatch,
  RuleRecord,
  UsageLimit,
  WebhookEndpoint,
  WebhookMessageRecord,
  WhoAmI,
  WithReservationResult,
  WorkDone,
} from "./types.js";

export interface UsageGateOptions {
  /** Where usage-gate listens, e.g. `http://usage-gate:8080`. */
  baseUrl: string;
  /** An API key with the scopes the calls need (`check`, `events`, `admin`). */
  apiKey: string;
  /** A check's deadline (default 500 ms: a warm check answers in well under 1 ms, a cold one waits for BillaBear up to 250 ms). */
  timeoutMs?: number;
  /** Each attempt's deadline for events, holds and admin calls (default 10,000 ms). */
  writeTimeoutMs?: number;
  /** A check when usage-gate cannot be reached: allow, deny (a decision marked `client_fallback`), or throw (default). */
  onUnavailable?: OnUnavailable;
  /** Retries after the first attempt for calls safe to repeat (default 4). */
  retries?: number;
  /** First backoff (default 100 ms), doubled each retry with full jitter, capped at `maxRetryDelayMs` (default 5,000 ms, also the cap on `Retry-After`). */
  retryBaseDelayMs?: number;
  maxRetryDelayMs?: number;
  /** Another fetch (a proxy agent, a test double); the platform's by default. */
  fetch?: typeof fetch;
  /** Sent as User-Agent where the platform allows it. */
  userAgent?: string;
}

export interface CallOptions {
  /** This call's deadline (per attempt), instead of the client's. */
  timeoutMs?: number;
  /**
   * Gives up on the call when it aborts: the attempt under way is cancelled, no retry follows,
   * and the call rejects with the signal's reason (a check does not fall back: the caller
   * stopped waiting, usage-gate did not fail).
   */
  signal?: AbortSignal;
}

/** What a check asks of the customer's plan (BillaBear's features, feature limits and user count). */
export interface PlanQuestion {
  /** A feature code: allowed only if the plan includes it (`feature_not_in_plan`). */
  feature?: string;
  /** With `feature`: how many more are about to be used (default 1). */
  quantity?: number;
  /** With `feature`: how many the caller counts in use now; allowed iff `inUse + quantity` fits the limit. */
  inUse?: number;
  /** Seats the customer would have: allowed iff within the plan's user count (`seats_exceeded`). */
  seats?: number;
  /** Who inside the customer asks (a user, a workspace): judged by usage-gate's per-subject rules. */
  subject?: string;
}

export interface CheckOptions extends CallOptions, PlanQuestion {
  /** Minor units the caller is about to spend: may the customer spend that much more? */
  cost?: number;
  onUnavailable?: OnUnavailable;
}

/** One customer of `checkMany`, with what it asks. */
export interface CheckItem extends PlanQuestion {
  id: string;
  cost?: number;
}

export interface ReserveOptions extends CallOptions {
  /**
   * Names this hold for usage-gate (`Idempotency-Key`): asked again with it, the hold it made
   * answers, nothing new held. Default: a new UUID per `reserve` call, kept across its retries.
   */
  idempotencyKey?: string;
}

export interface EventOptions extends CallOptions {
  /** Store the event only if it fits under the customer's limit; otherwise `refused` (402). */
  enforce?: boolean;
}

/**
 * When a failed attempt may be sent again.
 * - `idempotent`: always (reads, events with their ids, holds with their idempotency keys,
 *   commits, releases);
 * - `unsent`: only when usage-gate surely did nothing (the connection was refused, or a 503
 *   saying so), e.g. a new override, which has no id of the caller's to deduplicate it by;
 * - `never`: checks, whose answer is needed now (`onUnavailable` decides instead).
 */
type Retry = "idempotent" | "unsent" | "never";

interface Request {
  method: "GET" | "POST" | "PATCH" | "DELETE";
  path: string;
  query?: Record<string, string | number | boolean | undefined>;
  body?: unknown;
  headers?: Record<string, string>;
  timeoutMs: number;
  /** The caller's, if any (see `CallOptions.signal`). */
  signal?: AbortSignal | undefined;
  retry: Retry;
}

interface Answer {
  status: number;
  body: unknown;
  requestId: string | undefined;
  /** Which attempt answered (0: the first). */
  attempt: number;
}

/** The client's version: usage-gate's, whose API it speaks (test/types.test.mjs holds the two together). */
export const VERSION = "0.1.0";
/** Statuses retried: "not now" rather than "no" (a proxy's, or usage-gate's Postgres down). Any
 * 5xx makes usage-gate unavailable to a check (`onUnavailable`); only these are sent again. */
const RETRIED = new Set([502, 503, 504]);
/** Failures before anything was sent: the request surely did nothing. */
const NOT_SENT = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "UND_ERR_CONNECT_TIMEOUT"]);

export class UsageGate {
  readonly #base: string;
  readonly #headers: Record<string, string>;
  readonly #timeoutMs: number;
  readonly #writeTimeoutMs: number;
  readonly #onUnavailable: OnUnavailable;
  readonly #retries: number;
  readonly #retryBaseMs: number;
  readonly #retryMaxMs: number;
  readonly #fetch: typeof fetch;

  /** Usage limits in BillaBear, through usage-gate (scope `admin`; every change audited). */
  readonly limits: {
    list(customerId: string, options?: CallOptions): Promise<UsageLimit[]>;
    create(customerId: string, limit: NewLimit, options?: CallOptions): Promise<UsageLimit>;
    delete(customerId: string, limitId: string, options?: CallOptions): Promise<void>;
  };
  /** Operators' bounded exceptions to a customer's decision (scope `admin`). */
  readonly overrides: {
    create(customerId: string, override: NewOverride, options?: CallOptions): Promise<OverrideRecord>;
    list(filter?: { customerId?: string; active?: boolean; limit?: number }, options?: CallOptions): Promise<OverrideRecord[]>;
    end(customerId: string, overrideId: string, reason?: string, options?: CallOptions): Promise<void>;
  };
  /** usage-gate's own limit rules (scope `admin`; every change audited). */
  readonly rules: {
    create(rule: NewRule, options?: CallOptions): Promise<RuleRecord>;
    list(filter?: { customerId?: string; planId?: string; limit?: number }, options?: CallOptions): Promise<RuleRecord[]>;
    get(ruleId: string, options?: CallOptions): Promise<RuleRecord>;
    change(ruleId: string, patch: RulePatch, options?: CallOptions): Promise<RuleRecord>;
    delete(ruleId: string, options?: CallOptions): Promise<void>;
  };
  /** usage-gate's own signed webhooks (scope `admin`). */
  readonly webhookEndpoints: {
    create(endpoint: NewWebhookEndpoint, options?: CallOptions): Promise<CreatedWebhookEndpoint>;
    list(options?: CallOptions): Promise<WebhookEndpoint[]>;
    get(endpointId: string, options?: CallOptions): Promise<WebhookEndpoint>;
    delete(endpointId: string, options?: CallOptions): Promise<void>;
    rotateSecret(endpointId: string, options?: CallOptions): Promise<Rotated>;
    enable(endpointId: string, options?: CallOptions): Promise<WebhookEndpoint>;
    messages(endpointId: string, filter?: { status?: "pending" | "delivered" | "failed"; limit?: number }, options?: CallOptions): Promise<WebhookMessageRecord[]>;
    resend(endpointId: string, messageId: string, options?: CallOptions): Promise<void>;
  };

  constructor(options: UsageGateOptions) {
    if (!options.baseUrl) throw new TypeError("UsageGate: baseUrl is required");
    if (!options.apiKey) throw new TypeError("UsageGate: apiKey is required");
    this.#base = options.baseUrl.replace(/\/+$/, "");
    this.#headers = { authorization: `Bearer ${options.apiKey}`, accept: "application/json" };
    // Browsers refuse to set User-Agent; servers' runtimes take it.
    if ((globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node) {
      this.#headers["user-agent"] = options.userAgent ?? `usage-gate-client-js/${VERSION}`;
    }
    this.#timeoutMs = positive(options.timeoutMs ?? 500, "timeoutMs");
    this.#writeTimeoutMs = positive(options.writeTimeoutMs ?? 10_000, "writeTimeoutMs");
    this.#onUnavailable = fallbackMode(options.onUnavailable ?? "throw");
    this.#retries = Math.max(0, Math.floor(options.retries ?? 4));
    this.#retryBaseMs = positive(options.retryBaseDelayMs ?? 100, "retryBaseDelayMs");
    this.#retryMaxMs = positive(options.maxRetryDelayMs ?? 5_000, "maxRetryDelayMs");
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);

    const write = (o?: CallOptions) => this.#deadline(o, this.#writeTimeoutMs);
    const customer = (id: string) => `/v1/customers/${segment(id, "customerId")}`;
    this.limits = {
      list: async (customerId, o) =>
        ((await this.#json({ method: "GET", path: `${customer(customerId)}/usage-limits`, ...write(o), retry: "idempotent" })) as { data: UsageLimit[] }).data,
      create: async (customerId, limit, o) =>
        (await this.#json({ method: "POST", path: `${customer(customerId)}/usage-limits`, body: limit, ...write(o), retry: "unsent" })) as UsageLimit,
      delete: async (customerId, limitId, o) => {
        await this.#json({ method: "DELETE", path: `${customer(customerId)}/usage-limits/${segment(limitId, "limitId")}`, ...write(o), retry: "unsent" });
      },
    };
    this.overrides = {
      create: async (customerId, override, o) =>
        (await this.#json({ method: "POST", path: `${customer(customerId)}/overrides`, body: override, ...write(o), retry: "unsent" })) as OverrideRecord,
      list: async (filter = {}, o) => {
        const path = filter.customerId ? `${customer(filter.customerId)}/overrides` : "/v1/overrides";
        const query = { active: filter.active, limit: filter.limit };
        return ((await this.#json({ method: "GET", path, query, ...write(o), retry: "idempotent" })) as { overrides: OverrideRecord[] }).overrides;
      },
      end: async (customerId, overrideId, reason, o) => {
        const path = `${customer(customerId)}/overrides/${segment(overrideId, "overrideId")}`;
        await this.#json({ method: "DELETE", path, query: { reason }, ...write(o), retry: "unsent" });
      },
    };
    const rule = (id: string) => `/v1/rules/${segment(id, "ruleId")}`;
    this.rules = {
      create: async (r, o) =>
        (await this.#json({ method: "POST", path: "/v1/rules", body: r, ...write(o), retry: "unsent" })) as RuleRecord,
      list: async (filter = {}, o) => {
        const query = { customer: filter.customerId, plan: filter.planId, limit: filter.limit };
        return ((await this.#json({ method: "GET", path: "/v1/rules", query, ...write(o), retry: "idempotent" })) as { rules: RuleRecord[] }).rules;
      },
      get: async (id, o) => (await this.#json({ method: "GET", path: rule(id), ...write(o), retry: "idempotent" })) as RuleRecord,
      change: async (id, patch, o) =>
        (await this.#json({ method: "PATCH", path: rule(id), body: patch, ...write(o), retry: "unsent" })) as RuleRecord,
      delete: async (id, o) => {
        await this.#json({ method: "DELETE", path: rule(id), ...write(o), retry: "unsent" });
      },
    };
    const endpoint = (id: string) => `/v1/webhook-endpoints/${segment(id, "endpointId")}`;
    this.webhookEndpoints = {
      create: async (e, o) =>
        (await this.#json({ method: "POST", path: "/v1/webhook-endpoints", body: e, ...write(o), retry: "unsent" })) as CreatedWebhookEndpoint,
      list: async (o) =>
        ((await this.#json({ method: "GET", path: "/v1/webhook-endpoints", ...write(o), retry: "idempotent" })) as { endpoints: WebhookEndpoint[] }).endpoints,
      get: async (id, o) => (await this.#json({ method: "GET", path: endpoint(id), ...write(o), retry: "idempotent" })) as WebhookEndpoint,
      delete: async (id, o) => {
        await this.#json({ method: "DELETE", path: endpoint(id), ...write(o), retry: "unsent" });
      },
      rotateSecret: async (id, o) =>
        (await this.#json({ method: "POST", path: `${endpoint(id)}/rotate-secret`, ...write(o), retry: "unsent" })) as Rotated,
      enable: async (id, o) =>
        (await this.#json({ method: "POST", path: `${endpoint(id)}/enable`, ...write(o), retry: "idempotent" })) as WebhookEndpoint,
      messages: async (id, filter = {}, o) =>
        ((await this.#json({ method: "GET", path: `${endpoint(id)}/messages`, query: filter, ...write(o), retry: "idempotent" })) as { messages: WebhookMessageRecord[] }).messages,
      resend: async (id, messageId, o) => {
        const path = `${endpoint(id)}/messages/${segment(messageId, "messageId")}/resend`;
        await this.#json({ method: "POST", path, ...write(o), retry: "idempotent" });
      },
    };
  }

  /**
   * May the customer keep using the product (and, with `cost`, spend that much more)? Never
   * retried: the answer is needed now. When usage-gate cannot be reached in `timeoutMs` (or
   * answers 5xx), `onUnavailable` decides: a decision marked `client_fallback`, or a throw.
   */
  async check(customerId: string, options: CheckOptions = {}): Promise<CheckDecision> {
    const request: Request = {
      method: "GET",
      path: `/v1/customers/${segment(customerId, "customerId")}/check`,
      query: { cost: options.cost, feature: options.feature, quantity: options.quantity, in_use: options.inUse, seats: options.seats, subject: options.subject },
      ...this.#deadline(options, this.#timeoutMs),
      retry: "never",
    };
    try {
      return (await this.#json(request)) as Decision;
    } catch (error) {
      return this.#fallback(error, options.onUnavailable, () => fallbackDecision(customerId, options.cost, error, options.onUnavailable ?? this.#onUnavailable));
    }
  }

  /** Up to 1,000 customers in one request, answered in order; an invalid item gets its own error in its place. */
  async checkMany(
    customers: Array<string | CheckItem>,
    options: Omit<CheckOptions, "cost" | keyof PlanQuestion> = {},
  ): Promise<Array<CheckDecision | CheckItemError>> {
    const items: CheckItem[] = customers.map((c) => (typeof c === "string" ? { id: c } : c));
    const request: Request = {
      method: "POST",
      path: "/v1/check",
      body: {
        customers: items.map(({ inUse, ...item }) => (inUse === undefined ? item : { ...item, in_use: inUse })),
      },
      ...this.#deadline(options, this.#timeoutMs),
      retry: "never",
    };
    try {
      return ((await this.#json(request)) as { decisions: Array<Decision | CheckItemError> }).decisions;
    } catch (error) {
      const mode = options.onUnavailable ?? this.#onUnavailable;
      return this.#fallback(error, options.onUnavailable, () => items.map((i) => fallbackDecision(i.id, i.cost, error, mode)));
    }
  }

  /**
   * One usage event, stored in Postgres before it is acknowledged. Retried on 502/503/504
   * (after `Retry-After`), connection errors and timeouts with the same `event_id` (generated
   * here when absent), so a retry is at worst a `duplicate`, never counted twice. With
   * `enforce`, an event that does not fit is `refused` (a 402: nothing stored) with the decision.
   * Other 4xx throw a `UsageGateError`; 409 (`conflict`: the id was used for other content, or
   * `event_dead`) among them.
   */
  async sendEvent(event: EventInput, options: EventOptions = {}): Promise<EventResult> {
    const body = withEventId(event);
    try {
      const answer = await this.#send({
        method: "POST",
        path: "/v1/events",
        query: { enforce: options.enforce || undefined },
        body,
        ...this.#deadline(options, this.#writeTimeoutMs),
        retry: "idempotent",
      });
      const stored = answer.body as { status: "accepted" | "duplicate"; event_id: string; decision?: Decision | null };
      return { ...stored, event_id: stored.event_id ?? body.event_id };
    } catch (error) {
      const refused = limitExceeded(error);
      if (refused) return { event_id: body.event_id, status: "refused", ...refused };
      throw unwrap(error);
    }
  }

  /**
   * Up to 1,000 events stored together, a result per event in order (`accepted`, `duplicate`,
   * `conflict`, `dead`, `invalid`, or with `enforce`, `refused`). Retried like `sendEvent`.
   */
  async sendEvents(events: EventInput[], options: EventOptions = {}): Promise<EventBatchAnswer> {
    return (await this.#json({
      method: "POST",
      path: "/v1/events/batch",
      query: { enforce: options.enforce || undefined },
      body: { events: events.map(withEventId) },
      ...this.#deadline(options, this.#writeTimeoutMs),
      retry: "idempotent",
    })) as EventBatchAnswer;
  }

  /**
   * Holds `{amount}` (minor units) or what `{code, value}` would cost, for `ttl_ms` (default
   * 60 s), under the customer's limit: `granted`, or `refused` (402: nothing held). Retried like
   * events: every attempt carries the same `Idempotency-Key`, so a retry after a lost answer is
   * answered with the hold the lost attempt made, never a second one.
   */
  async reserve(customerId: string, hold: NewReservation, options: ReserveOptions = {}): Promise<ReserveResult> {
    try {
      const granted = (await this.#json({
        method: "POST",
        path: `/v1/customers/${segment(customerId, "customerId")}/reservations`,
        body: hold,
        headers: { "idempotency-key": options.idempotencyKey ?? globalThis.crypto.randomUUID() },
        ...this.#deadline(options, this.#writeTimeoutMs),
        retry: "idempotent",
      })) as Granted;
      return { status: "granted", ...granted };
    } catch (error) {
      const refused = limitExceeded(error);
      if (refused) return { status: "refused", ...refused };
      throw unwrap(error);
    }
  }

  /**
   * Stores what the work used and closes the hold, in one transaction (never refused: the work
   * happened). Retried like events; a retry that finds the hold committed by the attempt whose
   * answer was lost reports each event `duplicate` (stored by that attempt).
   */
  async commit(reservationId: string, events: EventInput[], options: CallOptions = {}): Promise<CommitAnswer> {
    const sent = events.map(withEventId);
    try {
      const answer = await this.#send({
        method: "POST",
        path: `/v1/reservations/${segment(reservationId, "reservationId")}/commit`,
        body: { events: sent },
        ...this.#deadline(options, this.#writeTimeoutMs),
        retry: "idempotent",
      });
      return answer.body as CommitAnswer;
    } catch (error) {
      if (error instanceof RetriedError && error.status === 409) {
        const customer = sent.find((e) => e.customer)?.customer ?? "";
        return {
          reservation_id: reservationId,
          customer_id: customer,
          expired: false,
          results: sent.map((e) => ({ event_id: e.event_id, status: "duplicate" })),
        };
      }
      throw unwrap(error);
    }
  }

  /** Gives the hold's room back. A retry that finds it already released counts as released. */
  async release(reservationId: string, options: CallOptions = {}): Promise<void> {
    try {
      await this.#send({
        method: "DELETE",
        path: `/v1/reservations/${segment(reservationId, "reservationId")}`,
        ...this.#deadline(options, this.#writeTimeoutMs),
        retry: "idempotent",
      });
    } catch (error) {
      if (error instanceof RetriedError && error.status === 404) return;
      throw unwrap(error);
    }
  }

  /**
   * Holds, runs `work`, commits the events it reports and returns its value; if `work` throws,
   * releases the hold and rethrows. A refused hold does not run `work`. Events without
   * `customer` or `subscription` are the hold's customer's. `options.signal` covers the hold
   * only: once the work has run, its usage is committed (or its hold released) whatever the
   * signal says, so that what happened is recorded.
   */
  async withReservation<T>(
    customerId: string,
    hold: NewReservation,
    work: (reservation: Granted) => Promise<WorkDone<T>> | WorkDone<T>,
    options: ReserveOptions = {},
  ): Promise<WithReservationResult<T>> {
    const held = await this.reserve(customerId, hold, options);
    if (held.status === "refused") return held;
    const settle: CallOptions = { timeoutMs: options.timeoutMs };
    const { status: _granted, ...reservation } = held;
    let done: WorkDone<T>;
    try {
      done = await work(reservation);
    } catch (error) {
      // The work's own error is the one the caller needs; a failed release only delays the
      // room's return until the hold's ttl.
      await this.release(reservation.id, settle).catch(() => undefined);
      throw error;
    }
    const events = done.events.map((e) => (e.customer || e.subscription ? e : { ...e, customer: customerId }));
    const commit = await this.commit(reservation.id, events, settle);
    return { status: "committed", value: done.value, reservation, commit };
  }

  /** The customer's open holds (scope `admin`). */
  async reservations(customerId: string, options: CallOptions = {}): Promise<Reservation[]> {
    const path = `/v1/customers/${segment(customerId, "customerId")}/reservations`;
    const body = (await this.#json({ method: "GET", path, ...this.#deadline(options, this.#writeTimeoutMs), retry: "idempotent" })) as { reservations: Reservation[] };
    return body.reservations;
  }

  /** The audit log, newest first, every page fetched as the iteration reaches it (scope `admin`). */
  async *audit(filter: AuditFilter = {}, options: CallOptions = {}): AsyncGenerator<AuditRecord> {
    const time = (t: string | Date | undefined) => (t instanceof Date ? t.toISOString() : t);
    let cursor: string | undefined;
    do {
      const page = (await this.#json({
        method: "GET",
        path: "/v1/audit",
        query: {
          customer: filter.customer,
          action: filter.action,
          actor: filter.actor,
          since: time(filter.since),
          until: time(filter.until),
          limit: filter.pageSize,
          cursor,
        },
        ...this.#deadline(options, this.#writeTimeoutMs),
        retry: "idempotent",
      })) as AuditPage;
      yield* page.records;
      cursor = page.next_cursor ?? undefined;
    } while (cursor);
  }

  /** The calling key's name and scopes. */
  async whoami(options: CallOptions = {}): Promise<WhoAmI> {
    return (await this.#json({ method: "GET", path: "/v1/whoami", ...this.#deadline(options, this.#writeTimeoutMs), retry: "idempotent" })) as WhoAmI;
  }

  /** A call's deadline per attempt and the caller's signal. */
  #deadline(options: CallOptions | undefined, timeoutMs: number): { timeoutMs: number; signal: AbortSignal | undefined } {
    return { timeoutMs: options?.timeoutMs ?? timeoutMs, signal: options?.signal };
  }

  #fallback<T>(error: unknown, mode: OnUnavailable | undefined, decide: () => T): T {
    if (error instanceof UsageGateUnavailableError && (mode ?? this.#onUnavailable) !== "throw") return decide();
    throw error;
  }

  async #json(request: Request): Promise<unknown> {
    try {
      return (await this.#send(request)).body;
    } catch (error) {
      throw unwrap(error);
    }
  }

  /** Sends with the request's retry policy; a 2xx answer, or throws. */
  async #send(request: Request): Promise<Answer> {
    const url = new URL(this.#base + request.path);
    for (const [key, value] of Object.entries(request.query ?? {})) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, String(value));
    }
    const headers: Record<string, string> = { ...this.#headers, ...request.headers };
    let payload: string | undefined;
    if (request.body !== undefined) {
      headers["content-type"] = "application/json";
      payload = JSON.stringify(request.body);
    }
    const attempts = request.retry === "never" ? 1 : this.#retries + 1;
    for (let attempt = 0; ; attempt++) {
      let wait: number | undefined;
      let failure: UsageGateError;
      try {
        const response = await this.#fetch(url, {
          method: request.method,
          headers,
          body: payload,
          signal: request.signal
            ? AbortSignal.any([request.signal, AbortSignal.timeout(request.timeoutMs)])
            : AbortSignal.timeout(request.timeoutMs),
          redirect: "error",
        });
        const answer = await read(response, attempt);
        if (response.ok) return answer;
        failure = problemError(request, answer);
        if (!RETRIED.has(response.status)) {
          throw attempt > 0 ? new RetriedError(failure) : failure;
        }
        const unsent = response.status === 503;
        if (request.retry === "unsent" && !unsent) throw failure;
        wait = retryAfter(response.headers.get("retry-after"));
      } catch (error) {
        if (error instanceof UsageGateError || error instanceof RetriedError) throw error;
        if (request.signal?.aborted) throw request.signal.reason;
        failure = networkError(request, error);
        if (request.retry === "unsent" && !NOT_SENT.has(errorCode(error) ?? "")) throw failure;
      }
      if (attempt + 1 >= attempts) throw failure;
      const backoff = Math.random() * Math.min(this.#retryMaxMs, this.#retryBaseMs * 2 ** attempt);
      await sleep(Math.min(this.#retryMaxMs, Math.max(wait ?? 0, backoff)), request.signal);
    }
  }
}

/** A 4xx that answered a retry: the first attempt's outcome may explain it (a commit's 409). */
class RetriedError extends Error {
  readonly status: number | undefined;
  constructor(readonly error: UsageGateError) {
    super(error.message);
    this.status = error.status;
  }
}

function unwrap(error: unknown): unknown {
  return error instanceof RetriedError ? error.error : error;
}

function limitExceeded(error: unknown): { reason: "usage_limit_exceeded"; decision: Decision; problem: Problem } | undefined {
  const e = unwrap(error);
  if (e instanceof UsageGateError && e.status === 402 && e.problem?.code === "usage_limit_exceeded" && e.problem.decision) {
    return { reason: "usage_limit_exceeded", decision: e.problem.decision, problem: e.problem };
  }
  return undefined;
}

async function read(response: Response, attempt: number): Promise<Answer> {
  const text = await response.text();
  let body: unknown = undefined;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
  }
  return { status: response.status, body, requestId: response.headers.get("x-request-id") ?? undefined, attempt };
}

function problemError(request: Request, answer: Answer): UsageGateError {
  const problem = isProblem(answer.body) ? answer.body : undefined;
  const what = problem ? `${problem.code}: ${problem.detail}` : `HTTP ${answer.status}`;
  const message = `usage-gate ${request.method} ${request.path}: ${what}`;
  const init = { status: answer.status, problem, requestId: answer.requestId };
  return answer.status >= 500 ? new UsageGateUnavailableError(message, init) : new UsageGateError(message, init);
}

function networkError(request: Request, error: unknown): UsageGateUnavailableError {
  const timedOut = error instanceof DOMException && (error.name === "TimeoutError" || error.name === "AbortError");
  const reason = timedOut
    ? `no answer within ${request.timeoutMs} ms`
    : `${errorCode(error) ?? "unreachable"}: ${(error as Error)?.message ?? error}`;
  return new UsageGateUnavailableError(`usage-gate ${request.method} ${request.path}: ${reason}`, { cause: error });
}

function errorCode(error: unknown): string | undefined {
  // fetch fails with a TypeError whose cause is the socket's error (Node: `code`).
  const cause = (error as { cause?: { code?: string } })?.cause;
  return cause?.code ?? (error as { code?: string })?.code;
}

function isProblem(body: unknown): body is Problem {
  return typeof body === "object" && body !== null && typeof (body as Problem).code === "string";
}

function fallbackDecision(customerId: string, cost: number | undefined, error: unknown, mode: OnUnavailable): CheckDecision {
  return {
    customer_id: customerId,
    allowed: mode === "allow",
    status: "unknown",
    reasons: ["usage_gate_unavailable"],
    limits: [],
    estimate: null,
    cost: cost ?? null,
    fallback: true,
    source: "fallback",
    client_fallback: true,
    error: (error as Error)?.message ?? String(error),
  };
}

function withEventId<E extends EventInput>(event: E): E & { event_id: string } {
  return event.event_id ? (event as E & { event_id: string }) : { ...event, event_id: globalThis.crypto.randomUUID() };
}

/** Retry-After in seconds or as an HTTP date, in milliseconds. */
function retryAfter(header: string | null): number | undefined {
  if (!header) return undefined;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const at = Date.parse(header);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/** A path segment, refused before it reaches a URL when it could change the path. */
function segment(value: string, name: string): string {
  if (typeof value !== "string" || value === "" || /[/?#\\]|^\.\.?$/.test(value)) {
    throw new TypeError(`${name} must be a non-empty id without / ? # or \\, got ${JSON.stringify(value)}`);
  }
  return encodeURIComponent(value);
}

function positive(value: number, name: string): number {
  if (!(Number.isFinite(value) && value > 0)) throw new TypeError(`UsageGate: ${name} must be a positive number of milliseconds, got ${value}`);
  return value;
}

function fallbackMode(mode: OnUnavailable): OnUnavailable {
  if (mode !== "allow" && mode !== "deny" && mode !== "throw") {
    throw new TypeError(`UsageGate: onUnavailable must be "allow", "deny" or "throw", got ${JSON.stringify(mode)}`);
  }
  return mode;
}

/** Waits `ms`, or rejects with the signal's reason as soon as it aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const aborted = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", aborted);
      resolve();
    }, ms);
    signal?.addEventListener("abort", aborted, { once: true });
  });
}
