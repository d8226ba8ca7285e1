#!/usr/bin/env python3
"""Instructions per warm check, against the bare actix-web handler, counted by callgrind.

Wall-clock throughput on this 2-core machine swings by a third between runs (bench/README), so
a change to the check's path is judged here first: callgrind counts the instructions each
server executes for the same requests, which is repeatable whatever else the machine is doing.
Both servers run under `valgrind --tool=callgrind` with instrumentation off until they are warm;
then the counters are zeroed, N keep-alive requests are sent, and the counters dumped. The same
number of seconds with no requests is measured too, so the background work (forwarder, ledger,
expiries) can be told from the requests' own cost.

The warm customer has pending usage, as in bench/check.py: one accepted event, delivered to
the simulator, whose counter is held.

  python3 bench/check_instructions.py [--requests 5000] [--top 25] [--query '?feature=projects&in_use=3']

`--query` asks every counted check with that query (the warm customer's plan: sso, 25 projects,
10 users); the bare handler is asked as always.

Needs Postgres at 127.0.0.1:5432 and valgrind. Prints instructions per request for both, the
ratio, and the functions that cost the check most (inclusive), from callgrind_annotate.
"""

import argparse
import glob
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from common import Processes, psql, request, wait_for, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
APP, SIM, BARE = "127.0.0.1:18180", "127.0.0.1:18190", "127.0.0.1:18181"
KEY, SIM_KEY = "bench-check-key-0123456789", "bench-sim-key"
CUSTOMER = "00000000-0000-4000-8000-000000000007"
PATH = f"/v1/customers/{CUSTOMER}/check"


def seed_file(path):
    seed = {"metrics": [{"code": "api_calls"}], "customers": [{
        "id": CUSTOMER,
        "subscriptions": [{"id": "10000000-0000-4000-8000-000000000007", "metric": "api_calls",
                           "unit_price": 1.0, "usage": 7,
                           "plan": {"features": ["sso"], "limits": {"projects": 25}, "user_count": 10}}],
        "limits": [{"amount": 5000, "action": "WARNING"}, {"amount": 10000, "action": "DISABLE"}],
    }]}
    with open(path, "w") as f:
        json.dump(seed, f)


def hammer(address, n, query=""):
    """n GET requests on one keep-alive connection; every answer must be a 200."""
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Authorization": f"Bearer {KEY}"}
    for _ in range(n):
        conn.request("GET", PATH + query, headers=headers)
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            sys.exit(f"{address} answered {answer.status}")
    conn.close()


def window(pid, out_dir, label, work):
    """Zeroes pid's counters, runs work(), dumps them; returns (instructions, seconds, file)."""
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    started = time.time()
    work()
    seconds = time.time() - started
    before = set(glob.glob(os.path.join(out_dir, "callgrind.out.*")))
    subprocess.run(["callgrind_control", "-d", label, str(pid)], check=True, capture_output=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        for path in set(glob.glob(os.path.join(out_dir, "callgrind.out.*"))) - before:
            # The totals line comes last: until it is there, the dump is still being written.
            with open(path) as f:
                totals = [int(line.split()[1]) for line in f if line.startswith("totals:")]
            if totals:
                return totals[0], seconds, path
        time.sleep(0.2)
    sys.exit(f"callgrind wrote no dump for {label}")


def measure(procs, cmd, address, n, out_dir, name, env=None, warm=None, query=""):
    """(instructions per request net of idle background work, raw per request, dump file)."""
    os.makedirs(out_dir, exist_ok=True)
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out_dir}/callgrind.out.%p"]
    proc = procs.start(valgrind + cmd, env=env)
    wait_for(f"http://{address}/healthz" if warm else f"http://{address}{PATH}", name)
    if warm:
        warm()
    subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
    hammer(address, 200, query)  # the instrumented code's first run, outside the count
    loaded, seconds, dump = window(proc.pid, out_dir, "load", lambda: hammer(address, n, query))
    idle, idle_seconds, _ = window(proc.pid, out_dir, "idle", lambda: time.sleep(seconds))
    net = loaded - idle * seconds / max(idle_seconds, 1e-9)
    return net / n, loaded / n, dump


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--top", type=int, default=25, help="functions listed from the check's profile")
    parser.add_argument("--query", default="", help="asked with every counted check, e.g. '?feature=sso'")
    parser.add_argument("--rules", action="store_true",
                        help="the customer under 5 rules of usage-gate's own, 2 of them per subject, with usage "
                             "counted in each (ask with --query '?subject=alice')")
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--bin", "usage-gate", "--examples"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="usage-gate-instr-")
    seed = os.path.join(work, "seed.json")
    seed_file(seed)
    config = os.path.join(work, "usage-gate.toml")
    write_config(config, APP, SIM, SIM_KEY, KEY, ["check", "admin", "events"], billabear="timeout_ms = 2000",
                 more="[cache]\nttl_ms = 3600000\nmax_stale_ms = 3600000\n")
    psql("postgres", "DROP DATABASE IF EXISTS usage_gate_instr WITH (FORCE)")
    env = dict(os.environ, DATABASE_URL="postgres://postgres@127.0.0.1:5432/usage_gate_instr")
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def warm():
        request("GET", f"http://{APP}{PATH}", None, auth)
        event = {"event_id": "instr-pending-7", "customer": CUSTOMER, "code": "api_calls", "value": 3}
        request("POST", f"http://{APP}/v1/events", event, auth)
        deadline = time.time() + 120
        while time.time() < deadline:
            if psql("usage_gate_instr", "SELECT count(*) FROM outbox WHERE status = 'delivered'") == "1":
                estimate = request("GET", f"http://{APP}{PATH}", None, auth)["estimate"]
                if estimate.get("pending_events") == 1:
                    return
            time.sleep(0.5)
        sys.exit("the pending event was not delivered and counted within 120 s")

    def under_rules():
        customer = {"customer": CUSTOMER}
        day = {"calendar": "day", "time_zone": "Europe/Paris"}
        for rule in [
            {"measure": {"cost": {}}, "limit": 50_000, "window": day},
            {"measure": {"metric": "api_calls"}, "limit": 100_000, "window": {"calendar": "month"}},
            {"measure": {"cost": {}}, "limit": 20_000, "window": {"rolling_s": 3600}},
            {"measure": {"cost": {}}, "limit": 5_000, "window": day, "per_subject": True},
            {"measure": {"metric": "api_calls"}, "limit": 1_000, "window": {"rolling_s": 600},
             "per_subject": True, "subject_limits": {"alice": 2_000}},
        ]:
            request("POST", f"http://{APP}/v1/rules", dict(rule, scope=customer, mode="hard"), auth)
        for i, subject in enumerate(["alice", "bob"]):
            event = {"event_id": f"instr-rules-{i}", "customer": CUSTOMER, "code": "api_calls", "value": 2,
                     "subject": subject}
            request("POST", f"http://{APP}/v1/events", event, auth)
        deadline = time.time() + 60
        while time.time() < deadline:
            rules = request("GET", f"http://{APP}{PATH}?subject=alice", None, auth).get("rules", [])
            if len(rules) == 5 and all(rule["used"] > 0 for rule in rules):
                return
            time.sleep(0.2)
        sys.exit("the check did not show 5 rules with usage within 60 s")

    def warmed():
        warm()
        if args.rules:
            under_rules()

    with Processes() as procs:
        procs.start([os.path.join(RELEASE, "usage-gate"), "sim", "--address", SIM, "--api-key", SIM_KEY,
                     "--seed", seed, "--workers", "1", "--tick-ms", str(86_400_000)])
        wait_for(f"http://{SIM}/_sim/healthz", "the simulator")
        bare = measure(procs, [os.path.join(RELEASE, "examples", "bare-actix"), BARE], BARE, args.requests,
                       os.path.join(work, "bare"), "the bare handler")
        check = measure(procs, [os.path.join(RELEASE, "usage-gate"), "--config", config, "serve"], APP,
                        args.requests, os.path.join(work, "check"), "usage-gate", env=env, warm=warmed,
                        query=args.query)

    print(f"\ninstructions per request, {args.requests} keep-alive requests on one connection, "
          "net of the same time idle (raw in brackets):")
    print(f"  bare actix-web handler  {bare[0]:>9,.0f}  ({bare[1]:,.0f})")
    print(f"  warm check{args.query:<14}{check[0]:>9,.0f}  ({check[1]:,.0f})")
    print(f"  check / bare            {check[0] / bare[0]:.2f}x; bare / check {bare[0] / check[0]:.0%}")
    annotate = subprocess.run(["callgrind_annotate", "--inclusive=yes", check[2]],
                              capture_output=True, text=True, check=True).stdout
    rows = [line for line in annotate.splitlines() if re.match(r"^\s*[\d,]+ \(", line)]
    print(f"\nthe check's costliest functions, inclusive, of {check[1] * args.requests:,.0f} instructions "
          f"({check[2]}):")
    for line in rows[:args.top]:
        print("  " + line.strip()[:200])
    print(f"\nprofiles kept in {work}")


if __name__ == "__main__":
    main()
