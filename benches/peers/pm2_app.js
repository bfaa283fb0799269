// An app of fd 3 for pm2's cluster mode, unchanged but for where it listens:
// tests/recipes/app.js, or the file named by APP_JS (tests/recipes/app_close.js).
//
// The apps serve `listen({fd: 3})` (the socket handover or systemd hands them). Under
// pm2 there is no fd 3: pm2's cluster mode shares a port among its workers through
// Node's cluster module, so each worker must `listen(port)`. This shim turns that one
// call into `listen(PORT, "127.0.0.1")` and runs the app as it is, so both managers run
// the same app logic (routes, X-Worker-Pid, what it does on SIGTERM).
"use strict";
const http = require("http");
const path = require("path");

const listen = http.Server.prototype.listen;
http.Server.prototype.listen = function (options, ...rest) {
  if (options && options.fd === 3 && process.env.PORT) {
    return listen.call(this, Number(process.env.PORT), "127.0.0.1", ...rest);
  }
  return listen.call(this, options, ...rest);
};
require(process.env.APP_JS || path.join(__dirname, "..", "..", "tests", "recipes", "app.js"));
