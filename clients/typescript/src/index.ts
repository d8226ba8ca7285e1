export { UsageGate, VERSION } from "./client.js";
export type { UsageGateOptions, CallOptions, CheckOptions, CheckItem, PlanQuestion, EventOptions, ReserveOptions } from "./client.js";
export { UsageGateError, UsageGateUnavailableError, WebhookVerificationError } from "./errors.js";
export { verifyWebhook } from "./webhooks.js";
export type { WebhookMessage, UsageMessage, OverrideExpiredMessage, EventDeadMessage, FeatureLimitMessage, WebhookHeaders, VerifyOptions } from "./webhooks.js";
export type * from "./types.js";
