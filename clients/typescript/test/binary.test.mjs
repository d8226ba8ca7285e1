// Which usage-gate the tests run: never an older build than the tree's newest, silently.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import test from "node:test";

import { binary } from "./support/service.mjs";

test("the newest build is tested unless USAGE_GATE_BIN names one", () => {
  const root = mkdtempSync(join(tmpdir(), "usage-gate-bin-")) + "/";
  const [release, debug] = [`${root}target/release/usage-gate`, `${root}target/debug/usage-gate`];
  for (const path of [release, debug]) {
    mkdirSync(join(path, ".."), { recursive: true });
    writeFileSync(path, "");
  }
  utimesSync(release, 1_000, 1_000);
  utimesSync(debug, 2_000, 2_000);
  assert.equal(binary(root, {}), debug, "the debug build is newer");
  utimesSync(release, 3_000, 3_000);
  assert.equal(binary(root, {}), release);
  assert.equal(binary(root, { USAGE_GATE_BIN: debug }), debug);
  assert.throws(() => binary(root, { USAGE_GATE_BIN: `${root}nothing` }), /does not exist/);
});
