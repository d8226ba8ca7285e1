import type { FieldError, Problem } from "./types.js";

/**
 * usage-gate answered with an error (its problem+json fields are here), or could not be
 * reached (`UsageGateUnavailableError`).
 */
export class UsageGateError extends Error {
  /** The HTTP status; undefined when no answer came. */
  readonly status: number | undefined;
  /** The problem's stable code (`invalid_request`, `conflict`, `not_found`, ...). */
  readonly code: string | undefined;
  readonly type: string | undefined;
  readonly title: string | undefined;
  readonly detail: string | undefined;
  /** Each invalid field, named. */
  readonly errors: FieldError[];
  /** The whole problem+json body, with any extension fields. */
  readonly problem: Problem | undefined;
  /** usage-gate's `X-Request-Id`: every log line of the request carries it. */
  readonly requestId: string | undefined;

  constructor(message: string, init: { status?: number; problem?: Problem; requestId?: string; cause?: unknown } = {}) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "UsageGateError";
    this.status = init.status;
    this.problem = init.problem;
    this.code = init.problem?.code;
    this.type = init.problem?.type;
    this.title = init.problem?.title;
    this.detail = init.problem?.detail;
    this.errors = init.problem?.errors ?? [];
    this.requestId = init.requestId;
  }
}

/** usage-gate could not be reached, did not answer in time, or answered 502/503/504. */
export class UsageGateUnavailableError extends UsageGateError {
  constructor(message: string, init: { status?: number; problem?: Problem; requestId?: string; cause?: unknown } = {}) {
    super(message, init);
    this.name = "UsageGateUnavailableError";
  }
}

/** A webhook's signature, timestamp or headers did not verify: do not act on it. */
export class WebhookVerificationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WebhookVerificationError";
  }
}
