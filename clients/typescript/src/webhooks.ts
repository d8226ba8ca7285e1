// Verifying usage-gate's webhooks: the Standard Webhooks signature (HMAC-SHA256 of
// "{webhook-id}.{webhook-timestamp}.{body}", keyed with the base64 after `whsec_`), with the
// platform's Web Crypto, so it runs wherever fetch does.
import { WebhookVerificationError } from "./errors.js";
import type { Decision, Status } from "./types.js";

/** A `customer.usage.*` message: the decision as a check answers it, and the status before. */
export interface UsageMessage {
  type: "customer.usage.near_limit" | "customer.usage.warning" | "customer.usage.blocked" | "customer.usage.recovered";
  timestamp: string;
  data: Decision & { previous_status: Status | null };
}

export interface OverrideExpiredMessage {
  type: "customer.override.expired";
  timestamp: string;
  data: {
    customer_id: string;
    override: {
      id: string;
      effect: "allow" | "block" | "raise";
      amount: number | null;
      reason: string;
      created_by: string;
      created_at: string;
      expires_at: string;
    };
  };
}

/** An outbox event that will not reach BillaBear (refused, or out of retries). */
export interface EventDeadMessage {
  type: "event.dead";
  timestamp: string;
  data: {
    event_id: string;
    customer_id: string | null;
    subscription_id: string | null;
    code: string;
    value: number;
    attempts: number;
    received_at: string;
    error: string | null;
    upstream_status: number | null;
  };
}

/** A feature limit usage-gate counts: reached in its window (once), or that window ended. */
export interface FeatureLimitMessage {
  type: "feature_limit.reached" | "feature_limit.reset";
  timestamp: string;
  data: {
    customer_id: string;
    code: string;
    limit: number;
    /** `feature_limit.reached`: what was counted when it was seen. */
    used?: number;
    /** `feature_limit.reached`. */
    window?: string;
    window_start: string;
    /** `feature_limit.reached`: when the window ends. */
    resets_at?: string;
    /** `feature_limit.reset`. */
    window_end?: string;
  };
}

export type WebhookMessage = UsageMessage | OverrideExpiredMessage | EventDeadMessage | FeatureLimitMessage;

export type WebhookHeaders = Headers | Record<string, string | string[] | undefined>;

export interface VerifyOptions {
  /** How far the timestamp may be from now (default 300 s, the Standard Webhooks default). */
  toleranceSeconds?: number;
  /** Now (tests). */
  now?: Date;
}

/**
 * Verifies a delivery and returns its message. `secret` is the endpoint's `whsec_…`, or a list
 * of them while a receiver moves between the old and new one after a rotation (any one
 * matching verifies; usage-gate itself signs with both for 24 h). `rawBody` must be the bytes
 * as received, before any JSON parsing. Throws `WebhookVerificationError` when the headers are
 * missing, the timestamp is outside the tolerance, or no signature matches.
 */
export async function verifyWebhook(
  secret: string | string[],
  headers: WebhookHeaders,
  rawBody: string | Uint8Array,
  options: VerifyOptions = {},
): Promise<WebhookMessage> {
  const id = header(headers, "webhook-id");
  const timestamp = header(headers, "webhook-timestamp");
  const signatures = header(headers, "webhook-signature");
  if (!id || !timestamp || !signatures) {
    throw new WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header");
  }
  const seconds = Number(timestamp);
  if (!/^\d+$/.test(timestamp) || !Number.isSafeInteger(seconds)) {
    throw new WebhookVerificationError(`webhook-timestamp is not Unix seconds: ${JSON.stringify(timestamp)}`);
  }
  const tolerance = options.toleranceSeconds ?? 300;
  const now = Math.floor((options.now ?? new Date()).getTime() / 1000);
  if (Math.abs(now - seconds) > tolerance) {
    throw new WebhookVerificationError(`webhook-timestamp ${seconds} is more than ${tolerance} s from now (${now})`);
  }
  const body = typeof rawBody === "string" ? new TextEncoder().encode(rawBody) : rawBody;
  const signed = concat(new TextEncoder().encode(`${id}.${timestamp}.`), body);
  const offered = signatures
    .split(" ")
    .map((s) => s.split(","))
    .filter(([version, value]) => version === "v1" && value)
    .map(([, value]) => decodeBase64(value!))
    .filter((s): s is Uint8Array<ArrayBuffer> => s !== undefined);
  for (const candidate of Array.isArray(secret) ? secret : [secret]) {
    const key = await globalThis.crypto.subtle.importKey("raw", secretBytes(candidate), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
    for (const signature of offered) {
      // Web Crypto's verify compares in constant time.
      if (await globalThis.crypto.subtle.verify("HMAC", key, signature, signed)) {
        return JSON.parse(new TextDecoder().decode(body)) as WebhookMessage;
      }
    }
  }
  throw new WebhookVerificationError("no signature matches the secret");
}

function header(headers: WebhookHeaders, name: string): string | undefined {
  if (typeof (headers as Headers).get === "function") return (headers as Headers).get(name) ?? undefined;
  const record = headers as Record<string, string | string[] | undefined>;
  const key = Object.keys(record).find((k) => k.toLowerCase() === name);
  const value = key === undefined ? undefined : record[key];
  return Array.isArray(value) ? value[0] : value;
}

function secretBytes(secret: string): Uint8Array<ArrayBuffer> {
  const bytes = decodeBase64(secret.startsWith("whsec_") ? secret.slice("whsec_".length) : secret);
  if (!bytes || bytes.length === 0) throw new WebhookVerificationError("the secret is not whsec_ followed by base64");
  return bytes;
}

function decodeBase64(text: string): Uint8Array<ArrayBuffer> | undefined {
  try {
    const binary = atob(text);
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  } catch {
    return undefined;
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}
