#!/usr/bin/env python3
"""Enforcement at the point of use (issue 11), in one run on this machine, 64 connections (wrk):

  1. plain single events (POST /v1/events) for a customer far from its limit: the baseline;
  2. enforced single events (?enforce=true) for the same customer, interleaved with 1 round by
     round; the ratio enforced/plain is the figure (target >= 50%); and enforced events of a
     counted feature: a customer whose plan limits `api_calls` (far from it), so each event is
     judged under the feature limit too (issue 35: >= 80% of enforced events before it); and
     enforced events of a customer under 3 rules of usage-gate's own, a day, a month and a
     rolling hour (issue 36: >= 75% of enforced events with none);
  3. one customer at its limit: enforced events (every one refused, 402) and plain events;
  4. reservation create -> commit round trips (one 1-cent hold, then its commit with one event),
     on one customer and spread over 100 (`--only-holds` runs these alone); and on one customer
     with every hold asked with an `Idempotency-Key` (a new one each), round by round beside the
     first. With every usage-gate run done and usage-gate stopped, the floor under the hold runs:
     Postgres alone doing the writes a durable hold and its commit cannot do without
     (`bench/holds_floor.sql` with pgbench, batches of 17, 4 clients), for one customer and for
     100, so each hold figure is printed beside the floor measured in the same run.

The simulator's counter is held and BillaBear "hangs" on /events, so the forwarder does no
other work during the runs (as in events.py's ingest runs).

Needs Postgres at 127.0.0.1:5432, wrk and pgbench.

  python3 bench/enforce.py [--duration 8] [--rounds 3]
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

from common import Processes, psql, request, wait_for, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
APP, SIM = "127.0.0.1:18080", "127.0.0.1:18090"
KEY, SIM_KEY = "bench-enforce-key-0123456789", "bench-sim-key"
DB = "usage_gate_bench_enforce"
DB_URL = f"postgres://postgres@127.0.0.1:5432/{DB}"


def sim(method, path, body=None):
    return request(method, f"http://{SIM}/_sim{path}", body, timeout=10)


def customer(usage, limit, feature_limit=None):
    """A customer billed 1 cent per api call, `usage` calls counted, a DISABLE limit of `limit`;
    `feature_limit`: its plan limits the `api_calls` feature to that many."""
    subscription = {"metric": "api_calls", "unit_price": 1.0, "usage": usage}
    if feature_limit is not None:
        subscription["plan"] = {"limits": {"api_calls": feature_limit}}
    view = sim("POST", "/customers", {"subscriptions": [subscription],
                                      "limits": [{"amount": limit, "action": "DISABLE"}]})
    return view["id"]


def wrk(path, lua, duration, expect):
    """Requests/s; every answer must have status `expect` (wrk counts the others)."""
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{duration}s", "-s", lua, f"http://{APP}{path}"],
                         capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    unexpected = re.search(r"unexpected (\d+)", out)
    if unexpected and int(unexpected.group(1)) > 0:
        sys.exit(f"{path}: {unexpected.group(1)} answers were not {expect}:\n{out}")
    return rate


# Each wrk thread counts the answers it did not expect; `wrk` reads the total from its output.
COUNT_UNEXPECTED = """done = function()
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("unexpected") end
  io.write("unexpected " .. n .. "\\n")
end
"""


def event_script(work, name, customer, expect):
    """Fresh single events for `customer`; reports answers other than `expect`."""
    path = os.path.join(work, f"{name}.lua")
    event = ('{\\"event_id\\":\\"%s-%d\\",\\"customer\\":\\"' + customer +
             '\\",\\"code\\":\\"api_calls\\",\\"value\\":1}')
    with open(path, "w") as f:
        f.write(f"""
local threads = {{}}
function setup(thread) table.insert(threads, thread); thread:set("id", "{name}-" .. #threads) end
function init(args) counter = 0; unexpected = 0 end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {KEY}"
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, string.format("{event}", id, counter))
end
response = function(status) if status ~= {expect} then unexpected = unexpected + 1 end end
{COUNT_UNEXPECTED}""")
    return path


def hold_script(work, customers, name, keyed=False):
    """Each connection alternates: create a 1-cent hold for one of `customers` (at random), then
    commit it with one event; `keyed`: each hold with an `Idempotency-Key` of its own."""
    path = os.path.join(work, f"{name}.lua")
    listed = ", ".join(f'"{c}"' for c in customers)
    with open(path, "w") as f:
        f.write(f"""
local threads = {{}}
local customers = {{{listed}}}
function setup(thread) table.insert(threads, thread); thread:set("id", "{name}-" .. #threads) end
function init(args) counter = 0; unexpected = 0; ready = {{}} end
request = function()
  local headers = {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {KEY}"}}
  local hold = table.remove(ready)
  if hold then
    counter = counter + 1
    local body = string.format('{{"events":[{{"event_id":"%s-%d","customer":"%s","code":"api_calls","value":1}}]}}', id, counter, hold[2])
    return wrk.format("POST", "/v1/reservations/" .. hold[1] .. "/commit", headers, body)
  end
  local customer = customers[math.random(#customers)]
  {'holds = (holds or 0) + 1; headers["Idempotency-Key"] = id .. "-" .. holds' if keyed else ''}
  return wrk.format("POST", "/v1/customers/" .. customer .. "/reservations", headers, '{{"amount":1}}')
end
response = function(status, headers, body)
  if status == 201 then
    table.insert(ready, {{string.match(body, '"id":"([0-9a-f-]+)"'), string.match(body, '"customer_id":"([0-9a-f-]+)"')}})
  elseif status ~= 200 then
    unexpected = unexpected + 1
  end
end
{COUNT_UNEXPECTED}""")
    return path


FLOOR_DB = "usage_gate_bench_floor"
FLOOR_BATCH = 17


def floor(binary, config, customers, duration):
    """Hold -> commit pairs a second Postgres alone does (bench/holds_floor.sql) on a fresh
    database with the migrations applied."""
    psql("postgres", f"DROP DATABASE IF EXISTS {FLOOR_DB} WITH (FORCE)")
    psql("postgres", f"CREATE DATABASE {FLOOR_DB}")
    url = f"postgres://postgres@127.0.0.1:5432/{FLOOR_DB}"
    subprocess.run([binary, "--config", config, "migrate"], env=dict(os.environ, DATABASE_URL=url), check=True,
                   capture_output=True)
    out = subprocess.run(["pgbench", "-h", "127.0.0.1", "-U", "postgres", "-n", "-M", "prepared", "-c", "4",
                          "-j", "2", "-T", str(duration), "-D", f"customers={customers}", "-D",
                          f"batch={FLOOR_BATCH}", "-f", os.path.join(ROOT, "bench", "holds_floor.sql"),
                          FLOOR_DB], capture_output=True, text=True).stdout
    if "tps = " not in out:
        sys.exit(f"pgbench failed:\n{out}")
    # Pairs made: the holds committed (each has its event in the outbox), not tps x batch: a
    # client that found its customer's open holds all taken by others closed none.
    committed = int(psql(FLOOR_DB, "SELECT count(*) FROM outbox"))
    psql("postgres", f"DROP DATABASE IF EXISTS {FLOOR_DB} WITH (FORCE)")
    return committed / duration


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only-holds", action="store_true", help="skip the event runs")
    parser.add_argument("--only-events", action="store_true", help="skip the hold runs and the floor")
    args = parser.parse_args()
    for tool in ("wrk", "psql", "pgbench"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed")
    subprocess.run(["cargo", "build", "--release", "--bin", "usage-gate"], cwd=ROOT, check=True)
    psql("postgres", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    work = tempfile.mkdtemp(prefix="usage-gate-bench-enforce-")
    config = os.path.join(work, "usage-gate.toml")
    write_config(config, APP, SIM, SIM_KEY, KEY, ["events", "check", "admin"])
    plain, enforced, at_limit_enforced, at_limit_plain, round_trips, spread, keyed = [], [], [], [], [], [], []
    counted, under_rules = [], []
    with Processes() as procs:
        binary = os.path.join(RELEASE, "usage-gate")
        procs.start([binary, "sim", "--address", SIM, "--api-key", SIM_KEY, "--workers", "1",
                     "--tick-ms", "86400000"])
        wait_for(f"http://{SIM}/_sim/healthz", "the simulator")
        procs.start([binary, "--config", config, "serve"], env=dict(os.environ, DATABASE_URL=DB_URL))
        wait_for(f"http://{APP}/healthz", "usage-gate")
        far = customer(0, 10**15)
        full = customer(100, 100)
        holder = customer(0, 10**15)
        holders = [customer(0, 10**15) for _ in range(100)]
        limited = customer(0, 10**15, feature_limit=10**12)
        ruled = customer(0, 10**15)
        admin = {"Authorization": f"Bearer {KEY}"}
        for measure, window in [({"cost": {}}, {"calendar": "day", "time_zone": "Europe/Paris"}),
                                ({"metric": "api_calls"}, {"calendar": "month"}),
                                ({"cost": {}}, {"rolling_s": 3600})]:
            request("POST", f"http://{APP}/v1/rules", {"scope": {"customer": ruled}, "measure": measure,
                                                       "limit": 10**15, "window": window, "mode": "hard"}, admin)
        for c in (far, full, holder, limited, ruled, *holders):
            request("GET", f"http://{APP}/v1/customers/{c}/check", headers={"Authorization": f"Bearer {KEY}"})
        sim("PUT", "/faults", {"outage": "hang", "only": "events"})
        committed = lambda: int(psql(DB, "SELECT count(*) FROM reservations WHERE closed_as = 'committed'"))
        for r in range(args.rounds):
            if not args.only_holds:
                plain.append(wrk("/v1/events", event_script(work, f"plain{r}", far, 202), args.duration, 202))
                enforced.append(wrk("/v1/events?enforce=true", event_script(work, f"enforced{r}", far, 202),
                                    args.duration, 202))
                counted.append(wrk("/v1/events?enforce=true", event_script(work, f"counted{r}", limited, 202),
                                   args.duration, 202))
                under_rules.append(wrk("/v1/events?enforce=true", event_script(work, f"ruled{r}", ruled, 202),
                                       args.duration, 202))
                at_limit_enforced.append(wrk("/v1/events?enforce=true", event_script(work, f"refused{r}", full, 402),
                                             args.duration, 402))
                at_limit_plain.append(wrk("/v1/events", event_script(work, f"full{r}", full, 202), args.duration, 202))
            if args.only_events:
                continue
            before = committed()
            wrk("/", hold_script(work, [holder], f"hold{r}"), args.duration, 200)
            round_trips.append((committed() - before) / args.duration)
            before = committed()
            wrk("/", hold_script(work, [holder], f"keyed{r}", keyed=True), args.duration, 200)
            keyed.append((committed() - before) / args.duration)
            before = committed()
            wrk("/", hold_script(work, holders, f"spread{r}"), args.duration, 200)
            spread.append((committed() - before) / args.duration)
    floor_one = [] if args.only_events else [floor(binary, config, 1, args.duration) for _ in range(args.rounds)]
    floor_spread = [] if args.only_events else [floor(binary, config, 100, args.duration) for _ in range(args.rounds)]
    shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{args.rounds} rounds of {args.duration} s, wrk -t2 -c64, one event per request")
    if not args.only_holds:
        ratios = [e / p for e, p in zip(enforced, plain)]
        print(f"plain events, customer far from its limit:     median {statistics.median(plain):>8.0f}/s  {[round(x) for x in plain]}")
        print(f"enforced events, the same customer:            median {statistics.median(enforced):>8.0f}/s  {[round(x) for x in enforced]}")
        print(f"  enforced / plain, round by round:            median {statistics.median(ratios):>8.0%}   {[f'{x:.0%}' for x in ratios]}")
        ratios = [c / e for c, e in zip(counted, enforced)]
        print(f"enforced events of a counted feature:          median {statistics.median(counted):>8.0f}/s  {[round(x) for x in counted]}")
        print(f"  counted feature / enforced, round by round:  median {statistics.median(ratios):>8.0%}   {[f'{x:.0%}' for x in ratios]}")
        ratios = [u / e for u, e in zip(under_rules, enforced)]
        print(f"enforced events under 3 rules:                 median {statistics.median(under_rules):>8.0f}/s  {[round(x) for x in under_rules]}")
        print(f"  under 3 rules / enforced, round by round:    median {statistics.median(ratios):>8.0%}   {[f'{x:.0%}' for x in ratios]}")
        print(f"enforced events, customer at its limit (402):  median {statistics.median(at_limit_enforced):>8.0f}/s  {[round(x) for x in at_limit_enforced]}")
        print(f"plain events, the customer at its limit:       median {statistics.median(at_limit_plain):>8.0f}/s  {[round(x) for x in at_limit_plain]}")
    if args.only_events:
        return
    print(f"hold -> commit pairs, one customer:            median {statistics.median(round_trips):>8.0f}/s  {[round(x) for x in round_trips]}")
    print(f"  the floor (Postgres alone), one customer:    median {statistics.median(floor_one):>8.0f}/s  {[round(x) for x in floor_one]}")
    print(f"  holds / floor:                               median {statistics.median(round_trips) / statistics.median(floor_one):>8.0%}")
    print(f"hold -> commit pairs, 100 customers:           median {statistics.median(spread):>8.0f}/s  {[round(x) for x in spread]}")
    print(f"  the floor (Postgres alone), 100 customers:   median {statistics.median(floor_spread):>8.0f}/s  {[round(x) for x in floor_spread]}")
    print(f"  holds / floor:                               median {statistics.median(spread) / statistics.median(floor_spread):>8.0%}")
    ratios = [k / p for k, p in zip(keyed, round_trips)]
    print(f"  with an Idempotency-Key each, one customer:  median {statistics.median(keyed):>8.0f}/s  {[round(x) for x in keyed]}")
    print(f"  keyed / without, round by round:             median {statistics.median(ratios):>8.0%}   {[f'{x:.0%}' for x in ratios]}")

if __name__ == "__main__":
    main()
