// The names the client uses for usage-gate's requests and answers. Each is usage-gate's own
// schema from /openapi.json (openapi.ts, generated), so fields keep the service's JSON names;
// only what the client adds (generated event ids, results of its own) is written here.
import type { components } from "./openapi.js";

type Schemas = components["schemas"];

export type Decision = Schemas["Decision"];
export type Estimate = Schemas["Estimate"];
export type LimitView = Schemas["LimitView"];
export type FeatureView = Schemas["FeatureView"];
export type SeatsView = Schemas["SeatsView"];
export type OverrideView = Schemas["OverrideView"];
export type Status = Schemas["Status"];
export type Source = Schemas["Source"];
export type LimitAction = Schemas["LimitAction"];
export type CheckItemError = Schemas["CheckItemError"];
export type EventAnswer = Schemas["EventAnswer"];
export type EventBatchAnswer = Schemas["EventBatchAnswer"];
export type BatchItemResult = Schemas["BatchItemResult"];
export type NewEvent = Schemas["NewEvent"];
export type NewReservation = Schemas["NewReservation"];
export type Granted = Schemas["Granted"];
export type CommitAnswer = Schemas["CommitAnswer"];
export type CommitResult = Schemas["CommitResult"];
export type Reservation = Schemas["Reservation"];
export type NewLimit = Schemas["NewLimitBody"];
export type UsageLimit = Schemas["UsageLimit"];
export type NewOverride = Schemas["NewOverride"];
export type OverrideRecord = Schemas["OverrideRecord"];
export type NewRule = Schemas["NewRule"];
export type RulePatch = Schemas["RulePatch"];
export type RuleRecord = Schemas["RuleRecord"];
export type NewWebhookEndpoint = Schemas["NewWebhookEndpoint"];
export type WebhookEndpoint = Schemas["Endpoint"];
/** An endpoint as created: with its signing secret, shown only this once. */
export type CreatedWebhookEndpoint = Schemas["Created"];
export type Rotated = Schemas["Rotated"];
export type WebhookMessageRecord = Schemas["Message"];
export type WebhookMessageAttempt = Schemas["MessageAttempt"];
export type AuditRecord = Schemas["AuditRecord"];
export type AuditPage = Schemas["AuditPage"];
export type Problem = Schemas["Problem"];
/** The limit that refused an enforced event or a hold (`Problem.limit`): a usage limit in money or a feature limit. */
export type RefusedBy = Schemas["RefusedBy"];
export type FieldError = Schemas["FieldError"];
export type WhoAmI = Schemas["WhoAmI"];

/** What to answer for a check when usage-gate cannot be reached (or answers 5xx). */
export type OnUnavailable = "allow" | "deny" | "throw";

/**
 * A check's answer: usage-gate's decision, or, when it could not be reached and
 * `onUnavailable` is "allow" or "deny", the client's own, marked `client_fallback: true`
 * (with `fallback: true`, `source: "fallback"`, status `unknown`, reason
 * `usage_gate_unavailable`, and `error` saying what failed).
 */
export type CheckDecision = Decision & { client_fallback?: boolean; error?: string };

/** An event as the caller gives it: `event_id` is generated (a UUID) when absent. */
export type EventInput = Omit<NewEvent, "event_id"> & { event_id?: string };

/** A single event's outcome. `refused` (enforce only, a 402) stored nothing. */
export type EventResult =
  | { event_id: string; status: "accepted" | "duplicate"; decision?: Decision | null }
  | { event_id: string; status: "refused"; reason: "usage_limit_exceeded"; decision: Decision; problem: Problem };

/** A hold's outcome. `refused` (a 402) held nothing: do not start the work. */
export type ReserveResult =
  | ({ status: "granted" } & Granted)
  | { status: "refused"; reason: "usage_limit_exceeded"; decision: Decision; problem: Problem };

/** What `withReservation`'s function reports: the usage to commit, and its own result. */
export interface WorkDone<T> {
  events: EventInput[];
  value?: T;
}

export type WithReservationResult<T> =
  | { status: "committed"; value: T | undefined; reservation: Granted; commit: CommitAnswer }
  | { status: "refused"; reason: "usage_limit_exceeded"; decision: Decision; problem: Problem };

export interface AuditFilter {
  customer?: string;
  action?: string;
  actor?: string;
  /** RFC 3339, or a Date: records at or after. */
  since?: string | Date;
  /** RFC 3339, or a Date: records before. */
  until?: string | Date;
  /** Records per page (1 to 500; the service's default 100). */
  pageSize?: number;
}
