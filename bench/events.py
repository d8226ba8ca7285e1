#!/usr/bin/env python3
"""The event ingest and forwarding benchmark (issue 4), in one run on this machine:

  1. baseline: single-row insert transactions into the outbox table, 64 clients (pgbench);
  2. durable ingest of single-event POST /v1/events requests, 64 connections (wrk), by
     subscription, then by a cached customer (whose answer carries its decision with the event
     counted: one more read of its pending usage after the commit);
  3. durable ingest of 100-event POST /v1/events/batch requests, 64 connections (wrk);
  4. forwarding to the simulator answering in 5 ms, default outbox.concurrency: events/s while
     draining, and accept->delivered lag p50/p99 at a fixed offered load below capacity (oha -q).

Needs Postgres at 127.0.0.1:5432, pgbench, wrk and oha.

  python3 bench/events.py [--duration 10] [--rate 300]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import json

from common import Processes, psql, request, wait_for, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
APP, SIM = "127.0.0.1:18080", "127.0.0.1:18090"
KEY, SIM_KEY = "bench-events-key-0123456789", "bench-sim-key"
DB = "usage_gate_bench_events"
DB_URL = f"postgres://postgres@127.0.0.1:5432/{DB}"
SUBSCRIPTION = "a1111111-1111-4111-8111-111111111111"  # Acme's, in the built-in seed
CUSTOMER = "11111111-1111-4111-8111-111111111111"  # Acme


def control(method, path, body=None):
    request(method, f"http://{SIM}/_sim{path}", body, timeout=10)


def wrk(path, lua, duration):
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{duration}s", "-s", lua, f"http://{APP}{path}"],
                         capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        sys.exit(f"wrk saw {non2xx.group(1)} error responses:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def lua_script(work, name, events_per_request, target=("subscription", SUBSCRIPTION)):
    path = os.path.join(work, f"{name}.lua")
    event = ('{\\"event_id\\":\\"%s-%d-%d\\",\\"' + target[0] + '\\":\\"' + target[1] +
             '\\",\\"code\\":\\"api_calls\\",\\"value\\":1}')
    with open(path, "w") as f:
        f.write(f"""
local threads = 0
function setup(thread) threads = threads + 1; thread:set("id", "{name}" .. threads) end
function init(args) counter = 0 end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {KEY}"
request = function()
  counter = counter + 1
  local parts = {{}}
  for i = 1, {events_per_request} do
    parts[i] = string.format("{event}", id, counter, i)
  end
  local body
  if {events_per_request} == 1 then body = parts[1] else body = '{{"events":[' .. table.concat(parts, ",") .. ']}}' end
  return wrk.format(nil, nil, nil, body)
end
""")
    return path


def paced_events(rate, duration):
    """Posts `rate` fresh events a second for `duration` seconds from 4 threads on keep-alive
    connections, each request on its own schedule (no catching up in bursts). Returns how many."""
    import http.client
    import threading

    threads, sent = 4, [0]
    lock = threading.Lock()

    def run(t):
        conn = http.client.HTTPConnection(APP, timeout=10)
        interval, start, n = threads / rate, time.time(), 0
        while True:
            at = start + n * interval
            if at - start >= duration:
                break
            time.sleep(max(0.0, at - time.time()))
            body = json.dumps({"event_id": f"lag-{t}-{n}", "subscription": SUBSCRIPTION, "code": "api_calls", "value": 1})
            conn.request("POST", "/v1/events", body, {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 202:
                sys.exit(f"lag run: {response.status}")
            n += 1
        with lock:
            sent[0] += n

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sent[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rate", type=int, default=300, help="offered events/s for the lag run")
    args = parser.parse_args()
    for tool in ("wrk", "oha", "pgbench", "psql"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed")
    subprocess.run(["cargo", "build", "--release", "--bin", "usage-gate"], cwd=ROOT, check=True)
    psql("postgres", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    work = tempfile.mkdtemp(prefix="usage-gate-bench-events-")
    config = os.path.join(work, "usage-gate.toml")
    write_config(config, APP, SIM, SIM_KEY, KEY, ["events", "admin", "check"])
    results = {}
    with Processes() as procs:
        start = procs.start
        start([os.path.join(RELEASE, "usage-gate"), "sim", "--address", SIM, "--api-key", SIM_KEY, "--workers", "1"])
        wait_for(f"http://{SIM}/_sim/healthz", "the simulator")
        start([os.path.join(RELEASE, "usage-gate"), "--config", config, "serve"], env=dict(os.environ, DATABASE_URL=DB_URL))
        wait_for(f"http://{APP}/healthz", "usage-gate")

        # 1. Baseline: single-row insert transactions into the same table, same concurrency.
        pgb = os.path.join(work, "insert.sql")
        with open(pgb, "w") as f:
            f.write("INSERT INTO outbox (event_id, subscription_id, code, value, fingerprint, status) VALUES "
                    f"('pgbench-' || :client_id || '-' || clock_timestamp() || '-' || random(), '{SUBSCRIPTION}', "
                    "'api_calls', 1, '\\x00', 'delivered');\n")
        out = subprocess.run(["pgbench", "-h", "127.0.0.1", "-U", "postgres", "-n", "-c", "64", "-j", "2",
                              "-T", str(args.duration), "-f", pgb, DB], capture_output=True, text=True, check=True).stdout
        results["baseline"] = float(re.search(r"tps = ([\d.]+)", out).group(1))
        psql(DB, "DELETE FROM outbox")

        # 2. and 3. Durable ingest over HTTP. First alone, like the baseline: BillaBear "hangs" on
        # /events, so the forwarder holds 16 deliveries waiting out their timeout and does no
        # other work. Then with forwarding running (BillaBear answering in 5 ms), as in production.
        single, batch = lua_script(work, "single", 1), lua_script(work, "batch", 100)
        control("PUT", "/faults", {"outage": "hang", "only": "events"})
        results["single_rps"] = wrk("/v1/events", single, args.duration)
        request("GET", f"http://{APP}/v1/customers/{CUSTOMER}/check", None, {"Authorization": f"Bearer {KEY}"})
        by_customer = lua_script(work, "customer", 1, ("customer", CUSTOMER))
        results["single_customer_rps"] = wrk("/v1/events", by_customer, args.duration)
        results["batch_rps"] = wrk("/v1/events/batch", batch, args.duration)
        control("PUT", "/faults", {"latency_ms": 5})
        results["single_rps_forwarding"] = wrk("/v1/events", lua_script(work, "single2", 1), args.duration)

        # 4a. Forwarding rate: how fast the backlog from 2 and 3 drains.
        pending = int(psql(DB, "SELECT count(*) FROM outbox WHERE status = 'pending'"))
        started, drained_from = time.time(), pending
        drain_window = 20
        while time.time() - started < drain_window:
            time.sleep(1)
        left = int(psql(DB, "SELECT count(*) FROM outbox WHERE status = 'pending'"))
        results["forward_rate"] = (drained_from - left) / (time.time() - started)
        results["backlog"] = drained_from
        # Empty the backlog before the lag run, so lag measures steady state: delivered and
        # counted by BillaBear, as it would long have been, and the table vacuumed. Left
        # delivered but uncounted, hundreds of thousands of rows stayed pending usage for the
        # ledger to settle and autovacuum to clean up during the lag run (two runs of four gave a
        # p50 of 232 and 461 ms against 32-40 ms, bench/README, issue 21).
        psql(DB, "UPDATE outbox SET status = 'delivered', delivered_at = now(), retired_at = now(), "
                 "retired_as = 'counted' WHERE status = 'pending'")
        psql(DB, "VACUUM ANALYZE outbox")

        # 4b. Lag at a fixed offered load below capacity: fresh events at --rate per second.
        sent = paced_events(args.rate, args.duration)
        deadline = time.time() + 60
        while int(psql(DB, "SELECT count(*) FROM outbox WHERE event_id LIKE 'lag-%' AND status = 'delivered'")) < sent:
            if time.time() > deadline:
                sys.exit("the lag run's events were not all delivered within 60 s")
            time.sleep(0.5)
        p50, p99 = psql(DB, "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d) "
                        "FROM (SELECT extract(epoch FROM delivered_at - received_at) AS d FROM outbox "
                        "WHERE event_id LIKE 'lag-%') t").split("|")
        results["lag"] = (sent, float(p50) * 1000, float(p99) * 1000)
    shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"baseline, pgbench -c64 single-row insert transactions:  {results['baseline']:>8.0f} rows/s")
    print(f"POST /v1/events, wrk -c64, one event per request:      {results['single_rps']:>8.0f} events/s "
          f"= {results['single_rps'] / results['baseline']:.1f}x the baseline")
    print(f"POST /v1/events by a cached customer (decision counted): {results['single_customer_rps']:>6.0f} events/s "
          f"= {results['single_customer_rps'] / results['single_rps']:.2f}x by subscription")
    print(f"POST /v1/events/batch, wrk -c64, 100 events a request: {results['batch_rps'] * 100:>8.0f} events/s "
          f"({results['batch_rps']:.0f} requests/s)")
    print(f"POST /v1/events while forwarding to BillaBear (5 ms): {results['single_rps_forwarding']:>8.0f} events/s "
          f"= {results['single_rps_forwarding'] / results['baseline']:.1f}x the baseline")
    print(f"forwarding at BillaBear latency 5 ms, default concurrency: {results['forward_rate']:.0f} events/s "
          f"(draining a backlog of {results['backlog']})")
    sent, p50, p99 = results["lag"]
    print(f"accept->delivered lag at {args.rate} events/s offered ({sent} events): p50 {p50:.0f} ms, p99 {p99:.0f} ms")


if __name__ == "__main__":
    main()
