"""What the benchmark scripts share: usage-gate's configuration, HTTP requests, psql, waiting for
a service, and starting processes that are stopped (SIGTERM, then kill) however the run ends."""

import json
import signal
import subprocess
import sys
import time
import urllib.request


def write_config(path, address, sim, sim_key, key, scopes, billabear="", more=""):
    """usage-gate's configuration for a run: its address, the simulator as BillaBear, one API key
    with `scopes`; `billabear` adds keys to that section, `more` adds sections."""
    with open(path, "w") as f:
        f.write(f"""
[server]
address = "{address}"
[billabear]
base_url = "http://{sim}/api/v1"
api_key = "{sim_key}"
{billabear}
{more}
[log]
level = "warn"
[[auth.keys]]
name = "bench"
key = "{key}"
scopes = {json.dumps(scopes)}
""")


def request(method, url, body=None, headers=None, timeout=120):
    """A JSON request; returns the decoded answer (None when empty)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        text = r.read()
        return json.loads(text) if text else None


def psql(db, sql):
    """One statement on the local Postgres; returns psql's unaligned output."""
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-At", "-c", sql],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def wait_for(url, what):
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"{what} did not come up at {url}")


class Processes:
    """`with Processes() as procs: procs.start([...])`: every started process is stopped on exit."""

    def __init__(self):
        self.procs = []

    def start(self, cmd, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        return False
