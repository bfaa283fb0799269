// The Node server most apps have: the routes of tests/recipes/app.js (`/`, `/slow?ms=N`,
// each answer naming its process in X-Worker-Pid; a POST is echoed) on fd 3, and on
// SIGTERM the shutdown every tutorial shows: `server.close()` and
// `server.closeIdleConnections()`. That closes each idle keep-alive connection at once,
// so a client sending its next request on one at that moment gets a reset: one failed
// request per keep-alive connection per reload, unless handover takes the connections
// over (issue 19). tests/recipes/app.js drains instead (no failures by itself).
"use strict";
const http = require("http");

const pid = process.pid;

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    const url = new URL(req.url, "http://x");
    const ms = url.pathname === "/slow" ? Number(url.searchParams.get("ms")) || 0 : 0;
    const body =
      req.method === "POST"
        ? Buffer.concat(chunks)
        : url.pathname === "/slow"
          ? `slept ${ms} ms in pid ${pid}\n`
          : `hello from pid ${pid}\n`;
    setTimeout(() => {
      res.writeHead(200, {
        "Content-Type": "text/plain",
        "Content-Length": Buffer.byteLength(body),
        "X-Worker-Pid": String(pid),
      });
      res.end(body);
    }, ms);
  });
});

process.on("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});

server.listen({ fd: 3 });
