#!/usr/bin/env bash
# Fuzzes every route of usage-gate from its own /openapi.json with schemathesis (property-based:
# generated valid and invalid requests, plus stateful sequences) and checks what comes back: no
# 5xx, only documented statuses and content types, bodies that match their schemas, invalid
# input refused and valid input taken, 405 with Allow for undeclared methods.
#
# Usage: tests/fuzz/openapi.sh [SECONDS]   (default 120; needs Postgres as for `cargo test`)
# It runs usage-gate (a release build, or USAGE_GATE_BIN) against the BillaBear simulator on free ports and a
# throwaway database, and exits non-zero if schemathesis found anything.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-120}"
command -v st >/dev/null || pip install --quiet 'schemathesis>=4.32,<5'
# USAGE_GATE_BIN: a binary already built (e.g. target/debug/usage-gate); else a release build.
bin=${USAGE_GATE_BIN:-target/release/usage-gate}
[[ -n ${USAGE_GATE_BIN:-} ]] || cargo build --release --quiet --bin usage-gate

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
app_port=$(free_port); sim_port=$(free_port)
key="fuzz-key-with-every-scope"
database="usage_gate_fuzz_$$"
work=$(mktemp -d)
cleanup() {
  kill "${app_pid:-}" "${sim_pid:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" postgres >/dev/null 2>&1 || true
  if [ "${status:-1}" = 0 ]; then rm -rf "$work"; else echo "logs kept in $work" >&2; fi
}
trap cleanup EXIT

cat >"$work/config.toml" <<TOML
[server]
address = "127.0.0.1:$app_port"
[database]
url = "postgres://postgres@127.0.0.1:5432/$database"
[billabear]
base_url = "http://127.0.0.1:$sim_port/api/v1"
api_key = "fuzz-sim-key"
[webhooks]
secret = "fuzz-webhook-secret-0123"
[log]
level = "warn"
format = "json"
[[auth.keys]]
name = "fuzzer"
key = "$key"
scopes = ["check", "events", "admin"]
TOML

# Requests the document holds valid but a rule it cannot express refuses, per route: a customer
# over its limit (402), a subscription usage-gate has not seen with enforce=true, an override
# that ends in the past (422), a rule's thresholds out of order (422), subject limits set on a
# rule that does not limit each subject (422: what the stored rule is). Every other route keeps
# the default: valid means accepted.
# A wrongly typed `cost` (a list, an object) reaches the query string as nothing, so the tool's
# "invalid cost accepted" is a request without one, which is valid: cost is given a value of its
# type, and tests/api/check.rs holds its bounds. Rules between parameters the document cannot
# express either: `quantity` and `in_use` need `feature`, and the gate's `X-Usage-Feature` and
# `feature` must agree; they are given a feature (tests/api/plan.rs holds both rules).
{
  printf '[[operations]]\ninclude-name = "GET /v1/customers/{customer_id}/check"\nparameters = { cost = 100, feature = "sso" }\n'
  printf '[[operations]]\ninclude-name = "GET /v1/gate"\nparameters = { feature = "sso", "X-Usage-Feature" = "sso" }\n'
  for operation in "POST /v1/events" "POST /v1/events/batch" "POST /v1/customers/{customer_id}/reservations" \
    "POST /v1/customers/{customer_id}/overrides" "POST /v1/rules" "PATCH /v1/rules/{rule_id}"; do
    printf '[[operations]]\ninclude-name = "%s"\n' "$operation"
    printf 'checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx", "402", "422"]\n'
  done
} >"$work/schemathesis.toml"

"$bin" sim --address "127.0.0.1:$sim_port" --api-key fuzz-sim-key >"$work/sim.log" 2>&1 &
sim_pid=$!
"$bin" serve --config "$work/config.toml" >"$work/app.log" 2>&1 &
app_pid=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$app_port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

status=0
# From the work folder, so schemathesis's and hypothesis's caches stay out of the repository.
(cd "$work" && st run "http://127.0.0.1:$app_port/openapi.json" \
  --header "Authorization: Bearer $key" --header "X-API-Key: $key" \
  --checks all \
  --exclude-checks ignored_auth,use_after_free,ensure_resource_availability,object_level_authorization \
  --max-time "$seconds" --request-timeout 10 --suppress-health-check all) || status=$?
if grep -q '"status":5[0-9][0-9]\|panicked' "$work/app.log"; then
  echo "usage-gate logged a 5xx or a panic:" >&2
  grep '"status":5[0-9][0-9]\|panicked' "$work/app.log" | head -20 >&2
  status=1
fi
exit "$status"
