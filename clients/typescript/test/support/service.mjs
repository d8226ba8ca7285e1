// A real usage-gate for the tests: `usage-gate demo` (the service with its built-in BillaBear
// simulator and demo customers) on free ports, with a database of its own, dropped after.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
export const API_KEY = "demo-key-change-me";
export const CUSTOMERS = {
  acme: "11111111-1111-4111-8111-111111111111", // estimate 1200, DISABLE above 10000
  globex: "22222222-2222-4222-8222-222222222222", // 9500 of 10000
  umbrella: "44444444-4444-4444-8444-444444444444", // 15000: over
  stark: "66666666-6666-4666-8666-666666666666", // flat plan, no usage
};

/** The binary: USAGE_GATE_BIN, else the newest of the tree's release and debug builds (an older
 * one would test code that is no longer there), named on stderr. */
export function binary(root = ROOT, env = process.env) {
  if (env.USAGE_GATE_BIN) {
    if (!existsSync(env.USAGE_GATE_BIN)) throw new Error(`USAGE_GATE_BIN=${env.USAGE_GATE_BIN} does not exist`);
    return env.USAGE_GATE_BIN;
  }
  const builds = [`${root}target/release/usage-gate`, `${root}target/debug/usage-gate`].filter((path) => existsSync(path));
  if (!builds.length) throw new Error("no usage-gate binary: run `cargo build` at the repository's root, or set USAGE_GATE_BIN");
  const newest = builds.sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
  process.stderr.write(`testing ${newest} (the newest build; USAGE_GATE_BIN to choose)\n`);
  return newest;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export async function poll(what, probe, deadlineMs = 30_000) {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function startUsageGate() {
  const bin = binary();
  const [port, simPort] = [await freePort(), await freePort()];
  const server = new URL(process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres");
  const database = `ug_client_ts_${process.pid}_${Date.now()}`;
  const databaseUrl = new URL(server);
  databaseUrl.pathname = `/${database}`;
  const child = spawn(bin, ["demo", "--sim-address", `127.0.0.1:${simPort}`], {
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl.toString(),
      USAGE_GATE__SERVER__ADDRESS: `127.0.0.1:${port}`,
      USAGE_GATE__LOG__LEVEL: "warn",
      USAGE_GATE__LOG__FORMAT: "pretty",
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (chunk) => (stderr += chunk));
  const exited = new Promise((resolve) => child.on("exit", resolve));
  const url = `http://127.0.0.1:${port}`;
  let gone = false;
  exited.then(() => (gone = true));
  await poll("usage-gate to be ready", async () => {
    if (gone) throw new Error(`usage-gate exited before it was ready:\n${stderr}`);
    try {
      return (await fetch(`${url}/readyz`)).status === 200;
    } catch {
      return false;
    }
  }, 60_000);
  return {
    url,
    apiKey: API_KEY,
    bin,
    /** Stops the process (SIGTERM, then SIGKILL). */
    async stop() {
      if (gone) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
    /** Stops it and drops its database. */
    async close() {
      await this.stop();
      spawnSync("psql", [server.toString(), "-q", "-c", `DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`], { stdio: "ignore" });
    },
    /** An admin call made without the client (what the tests assert against). */
    async admin(path, init = {}) {
      const response = await fetch(url + path, {
        ...init,
        headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json", ...(init.headers ?? {}) },
      });
      const text = await response.text();
      return { status: response.status, body: text ? JSON.parse(text) : undefined };
    },
  };
}
