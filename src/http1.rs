//! Data plane: fledge's own HTTP/1 codec (issue 18). A message head is
//! parsed once, with `httparse`, into spans of the read buffer (no
//! allocation per field, no `HeaderMap`); fledge decides each body's
//! framing itself, per RFC 9112 §6, as strictly as `tests/hostile.rs` asks;
//! the head that goes on is written by copying the fields it keeps and
//! adding fledge's own; bodies are forwarded as the bytes they came in,
//! checked by their framing on the way (`chunked`).
//!
//! - [`head`]: request and response heads, as spans.
//! - [`framing`]: which body a message has, or why it is refused.
//! - [`chunked`]: a chunked body checked as it streams by.
//! - [`write`](mod@write): the head sent on: kept fields copied, fledge's added.
//! - [`io`]: heads read from a stream, bodies forwarded with back-pressure.
//! - [`exchange`]: one request's exchange with its worker, over streams.
//!
//! Why not Pingora's HTTP/1 session: it builds an `http::HeaderMap` for
//! each message (a hashed, allocated map for a head that is read once and
//! mostly copied on), and most of fledge's per-request cost over nginx's
//! was there (`load-tests/README.md`).

pub mod chunked;
pub mod exchange;
pub mod framing;
pub mod head;
pub mod io;
pub mod write;
