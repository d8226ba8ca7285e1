// The client's types are usage-gate's /openapi.json: generated again from the running service,
// they must be what is committed (a field the service adds without the client knowing fails here).
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, test } from "node:test";

import { VERSION } from "../dist/index.js";
import { TARGET, generate } from "../scripts/generate.mjs";
import { startUsageGate } from "./support/service.mjs";

let service;
before(async () => (service = await startUsageGate()));
after(async () => service?.close());

test("src/openapi.ts is generated from the service's own /openapi.json", async () => {
  const document = await (await fetch(`${service.url}/openapi.json`)).json();
  const committed = await readFile(TARGET, "utf8");
  assert.ok(committed === (await generate(document)), "src/openapi.ts differs from the service's document: run `npm run generate -- URL` against a running usage-gate and commit the result");
  // What the client names is in it (a rename in the service fails the build as well as this).
  for (const name of ["Decision", "EventAnswer", "Granted", "CommitAnswer", "Problem", "NewEvent", "NewReservation", "NewOverride", "NewWebhookEndpoint", "UsageLimit", "AuditPage"]) {
    assert.ok(document.components.schemas[name], `${name} is not in the document`);
  }
});

test("the client's version is usage-gate's", async () => {
  const document = await (await fetch(`${service.url}/openapi.json`)).json();
  const manifest = JSON.parse(await readFile(new URL("../package.json", import.meta.url), "utf8"));
  assert.deepEqual([manifest.version, VERSION], [document.info.version, document.info.version]);
});
