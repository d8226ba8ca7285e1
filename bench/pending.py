#!/usr/bin/env python3
"""Real-time enforcement across replicas (issue 10), in one run on this machine: the time from an
event's 202 on one replica to a check on another replica showing it.

Two usage-gate replicas share one database and the simulator (whose counter is held, so nothing
is retired during the run). Each round posts one event for Acme to replica A, then checks Acme on
replica B as fast as one keep-alive connection allows until `estimate.pending_events` counts it.
Rounds are spaced, so each measures one event on a quiet system; a second pass repeats it while a
background load posts events for other customers to replica A (64 connections, wrk).

Needs Postgres at 127.0.0.1:5432 and wrk.

  python3 bench/pending.py [--events 300] [--load-seconds 20]
"""

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import Processes, psql, request, wait_for, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
A, B, SIM = "127.0.0.1:18080", "127.0.0.1:18082", "127.0.0.1:18090"
KEY, SIM_KEY = "bench-pending-key-0123456789", "bench-sim-key"
DB = "usage_gate_bench_pending"
ACME = "11111111-1111-4111-8111-111111111111"
ACME_SUBSCRIPTION = "a1111111-1111-4111-8111-111111111111"
GLOBEX = "22222222-2222-4222-8222-222222222222"


class Client:
    """One keep-alive connection to a replica."""

    def __init__(self, address):
        host, port = address.split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)

    def call(self, method, path, body=None):
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        self.conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = self.conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data else None)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def measure(a, b, first, count, label):
    """Posts `count` events to A, each seen on B before the next; returns the latencies (s)."""
    latencies = []
    for i in range(first, first + count):
        status, _ = a.call("POST", "/v1/events",
                           {"event_id": f"pending-bench-{i}", "subscription": ACME_SUBSCRIPTION,
                            "code": "api_calls", "value": 1})
        accepted = time.perf_counter()
        assert status == 202, status
        while True:
            status, decision = b.call("GET", f"/v1/customers/{ACME}/check")
            assert status == 200, status
            if decision["estimate"]["pending_events"] >= i + 1:
                latencies.append(time.perf_counter() - accepted)
                break
            if time.perf_counter() - accepted > 5:
                sys.exit(f"{label}: event {i} not seen on replica B within 5 s: {decision}")
        time.sleep(0.02)
    return latencies


def report(label, latencies):
    ms = [x * 1000 for x in latencies]
    print(f"  {label:<44} n={len(ms)}  p50 {percentile(ms, 50):.2f} ms  p99 {percentile(ms, 99):.2f} ms  "
          f"max {max(ms):.2f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300, help="events per pass")
    parser.add_argument("--load-seconds", type=int, default=20, help="length of the loaded pass's background load")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    subprocess.run(["cargo", "build", "--release", "--bin", "usage-gate"], cwd=ROOT, check=True)
    psql("postgres", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    work = tempfile.mkdtemp(prefix="usage-gate-bench-")
    env = dict(os.environ, DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DB}")
    with Processes() as procs:
        procs.start([os.path.join(RELEASE, "usage-gate"), "sim", "--address", SIM, "--api-key", SIM_KEY,
                     "--workers", "1", "--tick-ms", str(86_400_000)])
        wait_for(f"http://{SIM}/_sim/healthz", "the simulator")
        for address, name in ((A, "a"), (B, "b")):
            path = os.path.join(work, f"{name}.toml")
            write_config(path, address, SIM, SIM_KEY, KEY, ["check", "events", "admin"])
            procs.start([os.path.join(RELEASE, "usage-gate"), "--config", path, "serve"], env=env)
            wait_for(f"http://{address}/healthz", f"replica {name}")
        a, b = Client(A), Client(B)
        for client in (a, b):
            assert client.call("GET", f"/v1/customers/{ACME}/check")[0] == 200

        print(f"from an event's 202 on replica A to a check on replica B showing it ({args.events} events each):")
        report("quiet", measure(a, b, 0, args.events, "quiet"))

        lua = os.path.join(work, "load.lua")
        with open(lua, "w") as f:
            f.write('counter = 0\nrequest = function()\n  counter = counter + 1\n'
                    '  local body = string.format(\'{"event_id":"load-%d-%d","customer":"'
                    f'{GLOBEX}'
                    '","code":"api_calls","value":1}\', math.random(1, 1e9), counter)\n'
                    '  return wrk.format("POST", "/v1/events", {["Content-Type"]="application/json"}, body)\nend\n')
        load = subprocess.Popen(["wrk", "-t1", "-c64", f"-d{args.load_seconds}s", "-s", lua,
                                 "-H", f"Authorization: Bearer {KEY}", f"http://{A}/v1/events"],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        loaded = measure(a, b, args.events, args.events, "under load")
        out, _ = load.communicate()
        rps = next((line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")), "?")
        report(f"while replica A ingests {rps} events/s", loaded)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
