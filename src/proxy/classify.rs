//! How a request ended (an [`Outcome`]), including Odoo's JSON-RPC errors,
//! which come back as HTTP 200 with an `error` member.
//!
//! [`JsonRpcSniffer`] reads the first bytes of a JSON response as they
//! stream past, without buffering or allocating: a small state machine that
//! tracks nesting and strings and looks for a top-level `"error"` key
//! (failure) or `"result"` key (success). It gives up after
//! [`SNIFF_LIMIT`] bytes; Odoo puts `jsonrpc`, `id` and then `error` or
//! `result` first, in the first hundred bytes.

use pingora::{Error, ErrorSource, ErrorType};

use crate::metrics::Outcome;

/// Bytes of a JSON body read before giving up on finding the verdict.
pub const SNIFF_LIMIT: u32 = 4096;

/// Streaming detector of a top-level `error` member.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonRpcSniffer {
    active: bool,
    done: bool,
    error: bool,
    scanned: u32,
    depth: u16,
    in_string: bool,
    escape: bool,
    expect_key: bool,
    capturing: bool,
    after_key: bool,
    key: [u8; 6],
    key_len: u8,
}

impl JsonRpcSniffer {
    /// A sniffer that will read what it is fed.
    pub fn start() -> Self {
        JsonRpcSniffer {
            active: true,
            ..Default::default()
        }
    }

    /// The body carried a top-level `error` member.
    pub fn is_error(&self) -> bool {
        self.error
    }

    /// Feed the next chunk of the body.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.active || self.done {
            return;
        }
        for &b in bytes {
            self.scanned += 1;
            if self.scanned > SNIFF_LIMIT {
                self.done = true;
                return;
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                    self.key_len = u8::MAX; // an escaped key is neither of ours
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if self.capturing {
                        self.capturing = false;
                        self.after_key = true;
                    }
                } else if self.capturing {
                    let i = usize::from(self.key_len);
                    if i < self.key.len() {
                        self.key[i] = b;
                        self.key_len += 1;
                    } else {
                        self.key_len = u8::MAX;
                    }
                }
                continue;
            }
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'{' => {
                    self.depth += 1;
                    if self.depth == 1 {
                        self.expect_key = true;
                    }
                }
                b'[' if self.depth == 0 => {
                    // A batch or a bare array: not what Odoo answers.
                    self.done = true;
                    return;
                }
                b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        self.done = true;
                        return;
                    }
                }
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 && self.expect_key {
                        self.capturing = true;
                        self.expect_key = false;
                        self.key_len = 0;
                    }
                }
                b':' if self.depth == 1 && self.after_key => {
                    self.after_key = false;
                    let key = self.key.get(..usize::from(self.key_len)).unwrap_or_default();
                    if key == b"error" {
                        self.error = true;
                        self.done = true;
                        return;
                    }
                    if key == b"result" {
                        self.done = true;
                        return;
                    }
                }
                b',' if self.depth == 1 => self.expect_key = true,
                _ if self.depth == 0 => {
                    // Not an object at all.
                    self.done = true;
                    return;
                }
                _ => {}
            }
        }
    }
}

/// The outcome of a request that ended with `status` written (0: none) and
/// `error`, if any.
pub fn outcome(status: u16, error: Option<&Error>, jsonrpc_error: bool) -> Outcome {
    if let Some(e) = error {
        return match e.esource() {
            ErrorSource::Downstream => Outcome::ClientAbort,
            ErrorSource::Upstream => match e.etype() {
                ErrorType::ConnectTimedout
                | ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError
                | ErrorType::BindError
                | ErrorType::TLSHandshakeFailure
                | ErrorType::TLSHandshakeTimedout => Outcome::ConnectFailure,
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => Outcome::Timeout,
                ErrorType::HTTPStatus(code) if *code < 500 => Outcome::ClientError,
                ErrorType::HTTPStatus(_) => Outcome::ServerError,
                ErrorType::ConnectionClosed
                | ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::H2Error => Outcome::Reset,
                _ => Outcome::Reset,
            },
            ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
                ErrorType::HTTPStatus(code) if *code < 500 => Outcome::ClientError,
                _ => Outcome::ServerError,
            },
        };
    }
    match status {
        500.. => Outcome::ServerError,
        400..=499 => Outcome::ClientError,
        // Nothing was written and nothing failed: the client left first.
        0 => Outcome::ClientAbort,
        _ if jsonrpc_error => Outcome::JsonRpcError,
        _ => Outcome::Ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniff(chunks: &[&str]) -> bool {
        let mut s = JsonRpcSniffer::start();
        for c in chunks {
            s.feed(c.as_bytes());
        }
        s.is_error()
    }

    #[test]
    fn odoo_errors_are_found_however_the_body_is_split() {
        let body = r#"{"jsonrpc": "2.0", "id": 4, "error": {"code": 200, "message": "Odoo Server Error", "data": {"name": "odoo.exceptions.UserError"}}}"#;
        assert!(sniff(&[body]));
        for cut in 1..body.len() {
            assert!(sniff(&[&body[..cut], &body[cut..]]), "split at {cut}");
        }
    }

    #[test]
    fn results_and_nested_errors_are_not_errors() {
        assert!(!sniff(&[
            r#"{"jsonrpc":"2.0","id":1,"result":{"error":"a field called error"}}"#
        ]));
        assert!(!sniff(&[r#"{"jsonrpc":"2.0","id":1,"result":[{"error":1}]}"#]));
        assert!(!sniff(&[r#"{"id":"\"error\":","result":null}"#]));
        assert!(!sniff(&[r#"{"message":"error","result":1}"#]));
        assert!(!sniff(&[r#"[{"error":1}]"#]));
        assert!(!sniff(&["not json"]));
        assert!(!sniff(&[r#"{"errors":1}"#]));
        assert!(sniff(&["{\n  \"id\": null,\n  \"error\" : {}\n}"]));
    }

    #[test]
    fn sniffing_stops_after_the_limit() {
        let padding = " ".repeat(SNIFF_LIMIT as usize);
        assert!(!sniff(&[&format!("{{{padding}\"error\":1}}")]));
        let mut idle = JsonRpcSniffer::default();
        idle.feed(br#"{"error":1}"#);
        assert!(!idle.is_error(), "an inactive sniffer reads nothing");
    }

    #[test]
    fn outcomes_by_status_and_error() {
        assert_eq!(outcome(200, None, false), Outcome::Ok);
        assert_eq!(outcome(101, None, false), Outcome::Ok);
        assert_eq!(outcome(200, None, true), Outcome::JsonRpcError);
        assert_eq!(outcome(404, None, false), Outcome::ClientError);
        assert_eq!(outcome(503, None, false), Outcome::ServerError);
        assert_eq!(outcome(0, None, false), Outcome::ClientAbort);
        let e = |t: ErrorType, s: ErrorSource| match s {
            ErrorSource::Upstream => Error::new_up(t),
            ErrorSource::Downstream => Error::new_down(t),
            _ => Error::new_in(t),
        };
        assert_eq!(
            outcome(
                502,
                Some(&e(ErrorType::ConnectRefused, ErrorSource::Upstream)),
                false
            ),
            Outcome::ConnectFailure
        );
        assert_eq!(
            outcome(
                504,
                Some(&e(ErrorType::ReadTimedout, ErrorSource::Upstream)),
                false
            ),
            Outcome::Timeout
        );
        assert_eq!(
            outcome(
                502,
                Some(&e(ErrorType::ConnectionClosed, ErrorSource::Upstream)),
                false
            ),
            Outcome::Reset
        );
        assert_eq!(
            outcome(
                0,
                Some(&e(ErrorType::ConnectionClosed, ErrorSource::Downstream)),
                false
            ),
            Outcome::ClientAbort
        );
        assert_eq!(
            outcome(
                400,
                Some(&e(ErrorType::InvalidHTTPHeader, ErrorSource::Downstream)),
                false
            ),
            Outcome::ClientAbort
        );
    }
}
