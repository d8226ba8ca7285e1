#!/usr/bin/env bash
# Installs each client as its README says (the fenced block after `<!-- install -->`, with
# /path/to/usage-gate replaced by this checkout) into a fresh project of its own, then runs a
# check through it against a real usage-gate: TypeScript by `import` and by `require` (and
# type-checks both with the package's own declarations), Python in a new virtual environment.
#
# Usage: clients/test-install.sh [USAGE_GATE_BIN]   (default: target/debug/usage-gate, as
# `cargo test` builds it). Needs Postgres as for `cargo test`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-${USAGE_GATE_BIN:-$repo/target/debug/usage-gate}}
work=$(mktemp -d)
database="usage_gate_install_$$"
cleanup() {
  [[ -n ${service:-} ]] && kill "$service" 2>/dev/null && wait "$service" 2>/dev/null
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" postgres >/dev/null 2>&1 || true
  rm -rf "$work" "$repo"/clients/typescript/usage-gate-client-*.tgz
}
trap cleanup EXIT

# The README's install block, as a script.
install_block() {
  awk '/<!-- install -->/ { on = 1; next } on && /^```sh/ { inside = 1; next } inside && /^```/ { exit } inside' "$1" \
    | sed "s#/path/to/usage-gate#$repo#g"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
DATABASE_URL="postgres://postgres@127.0.0.1:5432/$database" USAGE_GATE__SERVER__ADDRESS="127.0.0.1:$port" \
  "$bin" demo --sim-address "127.0.0.1:$(free_port)" > "$work/service.log" 2>&1 &
service=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" > /dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$port/healthz" > /dev/null || { cat "$work/service.log"; exit 1; }
export USAGE_GATE_URL="http://127.0.0.1:$port" USAGE_GATE_KEY="demo-key-change-me"
# A demo customer over its DISABLE limit.
export BLOCKED="44444444-4444-4444-8444-444444444444"

echo "TypeScript: $(install_block "$repo/clients/typescript/README.md" | grep -c .) lines of clients/typescript/README.md"
mkdir "$work/ts" && cd "$work/ts"
npm init -y > /dev/null
install_block "$repo/clients/typescript/README.md" | bash -euo pipefail > "$work/npm.log" 2>&1 || { cat "$work/npm.log"; exit 1; }
cat > check.mjs <<'JS'
import { UsageGate } from "@usage-gate/client";
const ug = new UsageGate({ baseUrl: process.env.USAGE_GATE_URL, apiKey: process.env.USAGE_GATE_KEY });
// With a caller's signal: AbortSignal.any, the newest platform API the client uses.
const decision = await ug.check(process.env.BLOCKED, { signal: AbortSignal.timeout(5000) });
if (decision.allowed !== false || decision.status !== "blocked") throw new Error(JSON.stringify(decision));
console.log(`  import (Node ${process.version}): blocked, as it should be`);
JS
cat > check.cjs <<'JS'
const { UsageGate } = require("@usage-gate/client");
const ug = new UsageGate({ baseUrl: process.env.USAGE_GATE_URL, apiKey: process.env.USAGE_GATE_KEY });
ug.check(process.env.BLOCKED, { signal: AbortSignal.timeout(5000) }).then((decision) => {
  if (decision.allowed !== false) throw new Error(JSON.stringify(decision));
  console.log(`  require (Node ${process.version}): blocked, as it should be`);
});
JS
node check.mjs
node check.cjs
# And on the lowest Node the package's `engines` names (Node itself, from the npm registry).
lowest=$(node -p 'require("./node_modules/@usage-gate/client/package.json").engines.node.replace(/^>=/, "")')
mkdir "$work/node" && (cd "$work/node" && npm init -y > /dev/null && npm install --no-audit --no-fund --loglevel=error "node@$lowest" > /dev/null)
"$work/node/node_modules/.bin/node" check.mjs
"$work/node/node_modules/.bin/node" check.cjs
# Both module kinds type-check against the installed declarations (strict, Node's resolution).
cat > typed.mts <<'TS'
import { UsageGate, type CheckDecision } from "@usage-gate/client";
const ug = new UsageGate({ baseUrl: "http://x", apiKey: "k" });
export const decision: Promise<CheckDecision> = ug.check("id", { cost: 1 });
TS
cat > typed.cts <<'TS'
import client = require("@usage-gate/client");
const ug = new client.UsageGate({ baseUrl: "http://x", apiKey: "k" });
export const decision: Promise<client.CheckDecision> = ug.check("id");
TS
node "$repo/clients/typescript/node_modules/typescript/bin/tsc" --noEmit --strict --module node16 \
  --moduleResolution node16 --target es2022 --lib es2022,dom typed.mts typed.cts
echo "  types: both module kinds type-check"

echo "Python: $(install_block "$repo/clients/python/README.md" | grep -c .) line(s) of clients/python/README.md"
python3 -m venv "$work/venv"
(
  source "$work/venv/bin/activate"
  cd "$work"
  install_block "$repo/clients/python/README.md" | bash -euo pipefail > "$work/pip.log" 2>&1 || { cat "$work/pip.log"; exit 1; }
  python - <<'PY'
import os
from usage_gate import UsageGate

decision = UsageGate(base_url=os.environ["USAGE_GATE_URL"], api_key=os.environ["USAGE_GATE_KEY"]).check(os.environ["BLOCKED"])
assert decision["allowed"] is False and decision["status"] == "blocked", decision
print("  import usage_gate: blocked, as it should be")
PY
)
echo "clients installed as their READMEs say"
echo "install: 2 passed, 0 failed"
