//! Takeover (issue 19): the keep-alive connections an old worker closes at its stop
//! signal are held by handover, and the one request a client sends on such a connection
//! is answered by the serving generation instead of failing.
//!
//! Why: plain `uvicorn --fd 3` closes its idle keep-alive connections at SIGTERM, so
//! every reload fails one request per open keep-alive connection, and behind nginx with
//! upstream keep-alive each racing POST is a 502 (nginx retries a GET, never a POST it
//! already sent). These tests run that exact server (real uvicorn from
//! target/recipes-venv, with tests/takeover/app.py, which answers the sha256 and length
//! of a request body and logs every request it sees) under the real handover binary, and
//! prove:
//!
//! 1. nginx (`keepalive 32`, HTTP/1.1 upstream) in front, upstream over TCP and over a
//!    unix socket: POSTs with bodies through 5 reloads get **no 502** and no other failure.
//! 2. A 1 MiB POST, a chunked POST (with a trailer) and an `Expect: 100-continue` POST
//!    sent on kept-alive connections the old worker has already closed arrive intact
//!    (checksum at the app == checksum sent), answered 200 with `Connection: close` by a
//!    new worker.
//! 3. A close-delimited HTTP/1.0 response in flight at the drain completes, and its EOF
//!    comes within the hold (plus slack) after the body.
//! 4. TLS, garbage, an h2c preface and `Upgrade:` requests on held connections are closed
//!    and never reach an app.
//! 5. A client that sends half a request (half a body, or half a head) and stalls is closed
//!    at the graceful timeout, not at the hold, while `handover status` and `handover
//!    reload` keep answering.
//! 6. A pipelined pair on a held connection gets the first answer (with `Connection:
//!    close`) or a clean close, never a wrong or mixed-up response, and the second request
//!    never runs unanswered.
//! 7. `--takeover off`, `takeover = false` in the config file and `--listen …,takeover=off`
//!    bring the race back (the switch works).
//! 8. `handover status` (`takeover:` line) and the metrics count what happened; an idle
//!    held connection is closed at `--takeover-hold`.
//! 9. A stop or a pause (no generation left to serve) holds nothing: idle connections close
//!    at once.
//! 10. Connections the old worker accepts after its stop signal (uvicorn acts on SIGTERM at
//!     its next 100 ms tick and accepts until then) are held too.
//! 11. Unix sockets, and a dual-stack `[::]` listener with IPv4 and IPv6 clients, work the
//!     same.
//! 12. A connection opened but not used yet when the old worker closes it gets its first
//!     request answered too.
//!
//! Without uvicorn or nginx (outside CI) each test prints "SKIPPED: … run
//! scripts/recipe-deps" and passes; under CI=true it fails. `--takeover*` options are only
//! passed by the tests about them, so every other test also runs against a binary
//! without the feature (and shows the race it fixes).
//!
//! The harness is tests/common's `Manager` running uvicorn (takeover/uvicorn.rs); the
//! tests are grouped by theme in tests/takeover/*.rs.

mod common;

#[path = "takeover/bodies.rs"]
mod bodies;
#[path = "takeover/clients.rs"]
mod clients;
#[path = "takeover/counts.rs"]
mod counts;
#[path = "takeover/http.rs"]
mod http;
#[path = "takeover/nginx.rs"]
mod nginx;
#[path = "takeover/no_generation.rs"]
mod no_generation;
#[path = "takeover/races.rs"]
mod races;
#[path = "takeover/refused.rs"]
mod refused;
#[path = "takeover/sha256.rs"]
mod sha256;
#[path = "takeover/switch.rs"]
mod switch;
#[path = "takeover/uvicorn.rs"]
mod uvicorn;

use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
/// The default `--takeover-hold`.
const HOLD: Duration = SEC;
/// What a busy 2-core machine may add to any deadline measured here.
const SLACK: Duration = Duration::from_secs(2);
