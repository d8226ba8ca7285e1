"""A real usage-gate for the tests (``usage-gate demo``: the service with its built-in BillaBear
simulator and demo customers, on free ports, with a database of its own, dropped after), and a
TCP proxy in front of it that misbehaves on purpose."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[3]
API_KEY = "demo-key-change-me"
ACME = "11111111-1111-4111-8111-111111111111"  # estimate 1200, DISABLE above 10000
GLOBEX = "22222222-2222-4222-8222-222222222222"  # 9500 of 10000
UMBRELLA = "44444444-4444-4444-8444-444444444444"  # 15000: over
STARK = "66666666-6666-4666-8666-666666666666"  # flat plan, no usage


def binary(root: Path = ROOT, env: "dict[str, str] | os._Environ[str]" = os.environ) -> str:
    """USAGE_GATE_BIN, else the newest of the tree's release and debug builds (an older one would
    test code that is no longer there), named on stderr."""
    chosen = env.get("USAGE_GATE_BIN")
    if chosen:
        if not Path(chosen).exists():
            raise RuntimeError(f"USAGE_GATE_BIN={chosen} does not exist")
        return chosen
    builds = [path for path in (root / "target/release/usage-gate", root / "target/debug/usage-gate") if path.exists()]
    if not builds:
        raise RuntimeError("no usage-gate binary: run `cargo build` at the repository's root, or set USAGE_GATE_BIN")
    newest = max(builds, key=lambda path: path.stat().st_mtime)
    print(f"testing {newest} (the newest build; USAGE_GATE_BIN to choose)", file=sys.stderr)
    return str(newest)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(what: str, probe: Callable[[], object], deadline_s: float = 30.0) -> object:
    deadline = time.monotonic() + deadline_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Service:
    def __init__(self) -> None:
        self.port, sim_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = API_KEY
        server = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
        self._server = server
        self.database = f"ug_client_py_{os.getpid()}_{time.time_ns()}"
        database_url = urllib.parse.urlsplit(server)._replace(path=f"/{self.database}").geturl()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "USAGE_GATE__SERVER__ADDRESS": f"127.0.0.1:{self.port}",
            "USAGE_GATE__LOG__LEVEL": "warn",
            "USAGE_GATE__LOG__FORMAT": "pretty",
        }
        self._process = subprocess.Popen(
            [binary(), "demo", "--sim-address", f"127.0.0.1:{sim_port}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def ready() -> bool:
            if self._process.poll() is not None:
                raise RuntimeError(f"usage-gate exited before it was ready:\n{self._process.stderr.read().decode()}")
            try:
                return httpx.get(f"{self.url}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        poll("usage-gate to be ready", ready, 60)
        self.admin = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {API_KEY}"})

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def close(self) -> None:
        self.admin.close()
        self.stop()
        subprocess.run(
            ["psql", self._server, "-q", "-c", f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )

    def stored(self, event_id: str) -> list[dict]:
        """The outbox's rows with this event_id (what the tests assert against, not the client)."""
        events = self.admin.get("/v1/outbox", params={"limit": 500}).json()["events"]
        return [e for e in events if e["event_id"] == event_id]


class FaultProxy:
    """Each new connection takes the next fault from the plan, then passes traffic through:
    ``pass``; ``drop-response`` (the request reaches usage-gate, which handles it, and the
    connection is cut as its answer starts); ``reply-503`` (503 with ``Retry-After: 1``,
    usage-gate not reached) and ``reply-500`` (500, likewise); ``hang`` (accepted, never
    answered); ``drip`` (usage-gate's answer passed on a byte every 100 ms: each read is
    quick, the whole answer slow)."""

    def __init__(self, upstream_port: int, plan: list[str]) -> None:
        self.plan = list(plan)
        self.log: list[tuple] = []
        #: Every HTTP request clients sent, on any connection, as (method, path, fault, time):
        #: clients keep connections alive, so a retry on the same connection is a request, not a
        #: connection.
        self.requests: list[tuple] = []
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            fault = self.plan.pop(0) if self.plan else "pass"
            self.log.append((fault, time.monotonic()))
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client, fault), daemon=True).start()

    def _serve(self, client: socket.socket, fault: str) -> None:
        seen = _RequestParser(lambda method, path: self.requests.append((method, path, fault, time.monotonic())))
        if fault == "hang":
            self._drain(client, seen)
            return
        if fault in ("reply-503", "reply-500"):
            seen.feed(client.recv(65536))
            status = int(fault.removeprefix("reply-"))
            title, code, extra = {
                503: (b"Service Unavailable", b"storage_unavailable", b"Retry-After: 1\r\n"),
                500: (b"Internal Server Error", b"internal", b""),
            }[status]
            body = b'{"type":"urn:usage-gate:problem:%s","title":"%s","status":%d,"detail":"injected","code":"%s"}' % (
                code,
                title,
                status,
                code,
            )
            client.sendall(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/problem+json\r\n%sConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (status, title, extra, len(body), body)
            )
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self._upstream))
        self._sockets.append(upstream)
        threading.Thread(target=self._pipe, args=(client, upstream, seen), daemon=True).start()
        if fault == "drop-response":
            upstream.recv(1)
            _shut(client)
            _shut(upstream)
        elif fault == "drip":
            try:
                while chunk := upstream.recv(65536):
                    for byte in chunk:
                        client.sendall(bytes([byte]))
                        time.sleep(0.1)
            except OSError:
                pass
            _shut(client)
        else:
            self._pipe(upstream, client)

    @staticmethod
    def _drain(client: socket.socket, seen: "_RequestParser") -> None:
        try:
            while chunk := client.recv(65536):
                seen.feed(chunk)
        except OSError:
            pass

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket, seen: "_RequestParser | None" = None) -> None:
        try:
            while chunk := source.recv(65536):
                if seen:
                    seen.feed(chunk)
                target.sendall(chunk)
        except OSError:
            pass
        _shut(target)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for s in self._sockets:
            _shut(s)


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


class _RequestParser:
    """Calls ``seen(method, path)`` for each HTTP/1.1 request in a connection's bytes, fed in
    chunks (a request's body, sized by Content-Length, is skipped)."""

    def __init__(self, seen: Callable[[str, str], None]) -> None:
        self._seen, self._buffer, self._body = seen, b"", 0

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while True:
            if self._body:
                skipped = min(self._body, len(self._buffer))
                self._buffer, self._body = self._buffer[skipped:], self._body - skipped
                if self._body:
                    return
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].decode("latin-1").split("\r\n")
            self._buffer = self._buffer[end + 4 :]
            method, path = head[0].split(" ")[:2]
            lengths = [line.split(":", 1)[1] for line in head[1:] if line.lower().startswith("content-length:")]
            self._body = int(lengths[0]) if lengths else 0
            self._seen(method, path)
