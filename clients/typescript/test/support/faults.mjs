// A TCP proxy in front of the real usage-gate that misbehaves on purpose, one connection at a
// time: each new connection takes the next fault from the plan, then passes traffic through.
import { connect, createServer } from "node:net";

/**
 * Faults:
 * - "pass": traffic flows both ways;
 * - "drop-response": the request reaches usage-gate, which handles it, and the connection is
 *   cut as its answer starts (the client never sees it);
 * - "reply-503": answered 503 with `Retry-After: 1` without reaching usage-gate;
 * - "reply-500": answered 500 without reaching usage-gate;
 * - "hang": accepted, never answered;
 * - "drip": usage-gate's answer passed on a byte every 100 ms (each read quick, the whole slow).
 */
export async function faultProxy(upstreamPort, plan) {
  const log = [];
  // Every HTTP request clients sent, on any connection: clients keep connections alive, so a
  // retry on the same connection is a request, not a connection.
  const requests = [];
  const sockets = new Set();
  const server = createServer((client) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    const fault = plan.shift() ?? "pass";
    log.push({ fault, at: Date.now() });
    const parse = requestParser((method, path) => requests.push({ method, path, fault, at: Date.now() }));
    client.on("data", parse);
    client.on("error", () => {});
    if (fault === "hang") return;
    const replies = {
      "reply-503": [503, "Service Unavailable", "storage_unavailable", "Retry-After: 1\r\n"],
      "reply-500": [500, "Internal Server Error", "internal", ""],
    };
    if (fault in replies) {
      const [status, title, code, extra] = replies[fault];
      client.once("data", () => {
        const body = JSON.stringify({ type: `urn:usage-gate:problem:${code}`, title, status, detail: "injected", code });
        client.end(
          `HTTP/1.1 ${status} ${title}\r\nContent-Type: application/problem+json\r\n${extra}Connection: close\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
        );
      });
      return;
    }
    const upstream = connect(upstreamPort, "127.0.0.1");
    sockets.add(upstream);
    upstream.on("close", () => sockets.delete(upstream));
    upstream.on("error", () => client.destroy());
    client.pipe(upstream);
    if (fault === "drop-response") {
      upstream.once("data", () => {
        client.destroy();
        upstream.destroy();
      });
    } else if (fault === "drip") {
      const bytes = [];
      let timer;
      upstream.on("data", (chunk) => {
        bytes.push(...chunk);
        timer ??= setInterval(() => {
          if (bytes.length) client.write(Buffer.from([bytes.shift()]));
        }, 100);
      });
      client.on("close", () => clearInterval(timer));
    } else {
      upstream.pipe(client);
    }
    client.on("close", () => upstream.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    log,
    requests,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(resolve);
      }),
  };
}

/** Calls `seen(method, path)` for each HTTP/1.1 request in a connection's bytes, fed in chunks
 * (a request's body, sized by Content-Length, is skipped). */
function requestParser(seen) {
  let buffer = Buffer.alloc(0);
  let body = 0;
  return (chunk) => {
    buffer = Buffer.concat([buffer, chunk]);
    for (;;) {
      if (body > 0) {
        const skipped = Math.min(body, buffer.length);
        buffer = buffer.subarray(skipped);
        body -= skipped;
        if (body > 0) return;
      }
      const end = buffer.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = buffer.subarray(0, end).toString("latin1").split("\r\n");
      buffer = buffer.subarray(end + 4);
      const [method, path] = head[0].split(" ");
      const length = head.find((line) => /^content-length:/i.test(line));
      body = length ? Number(length.split(":")[1].trim()) : 0;
      seen(method, path);
    }
  };
}
