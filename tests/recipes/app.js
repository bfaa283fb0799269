// A Node HTTP server as a handover worker (tests/recipes.rs, README "Recipes").
//
// It serves on fd 3 (LISTEN_FDS from handover or systemd): `/` answers
// "hello from pid N", `/slow?ms=N` after N ms, a POST with its own body, each with an
// X-Worker-Pid header.
//
// On SIGTERM it drains without failing a keep-alive request. `server.close()` alone
// does not: since Node 19 it also closes idle keep-alive connections at once, and a
// client sending on one at that moment gets a reset. So: stop accepting
// (net.Server.prototype.close), answer the next request on each connection with
// `Connection: close`, close a connection only once it has been idle for a second, and
// exit when none is left. NODE_PLAIN_CLOSE=1 uses plain server.close(), for comparison.
"use strict";
const http = require("http");
const net = require("net");

const IDLE_GRACE_MS = 1000;
const pid = process.pid;
let draining = false;
// Each open connection and when it last became idle (0 while a request is active).
const conns = new Map();

const server = http.createServer((req, res) => {
  conns.set(req.socket, 0);
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => answer(req, res, Buffer.concat(chunks)));
  res.on("finish", () => {
    if (conns.has(req.socket)) conns.set(req.socket, Date.now());
  });
});

function answer(req, res, posted) {
  const url = new URL(req.url, "http://x");
  const ms = url.pathname === "/slow" ? Number(url.searchParams.get("ms")) || 0 : 0;
  const body =
    req.method === "POST"
      ? posted
      : url.pathname === "/slow"
        ? `slept ${ms} ms in pid ${pid}\n`
        : `hello from pid ${pid}\n`;
  setTimeout(() => {
    const headers = {
      "Content-Type": "text/plain",
      "Content-Length": Buffer.byteLength(body),
      "X-Worker-Pid": String(pid),
    };
    if (draining) headers.Connection = "close";
    res.writeHead(200, headers);
    res.end(body);
  }, ms);
}
server.keepAliveTimeout = 60_000;
server.on("connection", (socket) => {
  conns.set(socket, Date.now());
  socket.on("close", () => conns.delete(socket));
});

process.on("SIGTERM", () => {
  if (process.env.NODE_PLAIN_CLOSE === "1") {
    server.close(() => process.exit(0));
    return;
  }
  draining = true;
  net.Server.prototype.close.call(server); // stop accepting, touch no connection
  const sweep = setInterval(() => {
    const now = Date.now();
    for (const [socket, idleSince] of conns) {
      if (idleSince && now - idleSince > IDLE_GRACE_MS) socket.destroy();
    }
    if (conns.size === 0) {
      clearInterval(sweep);
      process.exit(0);
    }
  }, 50);
});

server.listen({ fd: 3 });
