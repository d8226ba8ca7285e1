"""What the benchmark scripts share: waiting for a service, and starting processes that are
stopped (SIGTERM, then kill) however the run ends."""

import signal
import subprocess
import sys
import time
import urllib.request


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
