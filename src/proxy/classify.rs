//! How a request ended (an [`Outcome`]), including Odoo's JSON-RPC errors,
//! which come back as HTTP 200 with an `error` member.
//!
//! [`JsonRpcSniffer`] reads the first bytes of a JSON response as they
//! stream past, without buffering or allocating: a small state machine that
//! tracks nesting and strings and looks for a top-level `"error"` key
//! (failure) or `"result"` key (success). For an error it reads on, with a
//! budget of its own (the `id` before it is the client's to make long), into the
//! error object for what Odoo says the error is — `error.code` and
//! `error.data.name`, the exception's `module.ClassName`, as
//! `odoo/http.py`'s `JsonRPCDispatcher.handle_error` and
//! `serialize_exception` write them — so that [`outcome`] can tell the
//! errors a user causes (a session Odoo does not know, a validation error,
//! a record the user may not read) from the server's faults. It gives up
//! after [`SNIFF_LIMIT`] bytes; Odoo puts `jsonrpc`, `id` and then `error`
//! or `result` first, and `code`, `message` and `data.name` first in the
//! error, in the first few hundred bytes.

use pingora::{Error, ErrorSource, ErrorType};

use crate::metrics::Outcome;

/// Bytes of a JSON body read before giving up on finding the verdict.
pub const SNIFF_LIMIT: u32 = 4096;
/// Longest exception name kept; a longer one is no name of the policy's
/// list (Odoo's own are under 40 bytes).
pub const NAME_MAX: usize = 64;

/// The exception names Odoo raises because of what the user did, not
/// because the release is broken: the default of a policy's
/// `analysis.client_exceptions`. `odoo.http.SessionExpiredException` is
/// what every made-up or expired `session_id` gets (JSON-RPC code 100),
/// `werkzeug.exceptions.NotFound` a missing page or record (code 404).
pub const DEFAULT_CLIENT_EXCEPTIONS: [&str; 8] = [
    "odoo.http.SessionExpiredException",
    "odoo.exceptions.AccessDenied",
    "odoo.exceptions.AccessError",
    "odoo.exceptions.MissingError",
    "odoo.exceptions.RedirectWarning",
    "odoo.exceptions.UserError",
    "odoo.exceptions.ValidationError",
    "werkzeug.exceptions.NotFound",
];

/// What a sniffed JSON-RPC answer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcAnswer {
    /// No JSON-RPC error (a result, not JSON-RPC, or not sniffed).
    NoError,
    /// An error the user caused (its exception is in the policy's list).
    ClientError,
    /// Any other error: the server's fault.
    Fault,
}

/// Where in the body the sniffer is, as far as it cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Pending {
    /// The next value is of no interest.
    #[default]
    Nothing,
    /// The value of the top-level `error`.
    ErrorObject,
    /// The value of `error.code`.
    Code,
    /// The value of `error.data`.
    DataObject,
    /// The value of `error.data.name`.
    Name,
}

/// Streaming detector of a top-level `error` member and of its `code` and
/// `data.name`.
#[derive(Debug, Clone, Copy)]
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
    /// Inside the top-level `error` object (depth 2).
    in_error: bool,
    /// Inside `error.data` (depth 3).
    in_data: bool,
    pending: Pending,
    /// Reading the digits of `error.code`.
    in_code: bool,
    code: Option<i32>,
    negative: bool,
    /// Reading the string `error.data.name`.
    in_name: bool,
    name: [u8; NAME_MAX],
    /// Bytes of `name`; `u8::MAX`: too long or escaped, no usable name.
    name_len: u8,
    /// The name's closing quote was read: it is whole.
    name_done: bool,
}

impl Default for JsonRpcSniffer {
    fn default() -> Self {
        JsonRpcSniffer {
            active: false,
            done: false,
            error: false,
            scanned: 0,
            depth: 0,
            in_string: false,
            escape: false,
            expect_key: false,
            capturing: false,
            after_key: false,
            key: [0; 6],
            key_len: 0,
            in_error: false,
            in_data: false,
            pending: Pending::Nothing,
            in_code: false,
            code: None,
            negative: false,
            in_name: false,
            name: [0; NAME_MAX],
            name_len: 0,
            name_done: false,
        }
    }
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

    /// `error.code`, if the body had one (and it was read).
    pub fn code(&self) -> Option<i32> {
        self.code
    }

    /// `error.data.name`, if the body had a usable one, read whole (one
    /// cut off by the budget is no name: it might be a listed name's prefix).
    pub fn name(&self) -> Option<&[u8]> {
        self.name
            .get(..usize::from(self.name_len))
            .filter(|n| self.name_done && self.name_len != u8::MAX && !n.is_empty())
    }

    /// What the answer said, judged against `client_exceptions` (a
    /// policy's `analysis.client_exceptions`). Without a name (cut off, or
    /// a proxy's own error), Odoo's two special codes stand for theirs:
    /// 100 for `odoo.http.SessionExpiredException`, 404 for
    /// `werkzeug.exceptions.NotFound`.
    pub fn answer<S: AsRef<str>>(&self, client_exceptions: &[S]) -> RpcAnswer {
        if !self.error {
            return RpcAnswer::NoError;
        }
        let name = self.name().or(match self.code {
            Some(100) => Some(b"odoo.http.SessionExpiredException".as_slice()),
            Some(404) => Some(b"werkzeug.exceptions.NotFound".as_slice()),
            _ => None,
        });
        match name {
            Some(name) if client_exceptions.iter().any(|c| c.as_ref().as_bytes() == name) => {
                RpcAnswer::ClientError
            }
            _ => RpcAnswer::Fault,
        }
    }

    /// Objects whose keys are followed: the top level, the error, its data.
    fn tracked(&self) -> bool {
        match self.depth {
            1 => true,
            2 => self.in_error,
            3 => self.in_data,
            _ => false,
        }
    }

    /// A key of a tracked object was read; `:` follows.
    fn on_key(&mut self) {
        let key = self.key.get(..usize::from(self.key_len)).unwrap_or_default();
        self.pending = match (self.depth, key) {
            (1, b"error") => {
                self.error = true;
                // The error gets a budget of its own: what came before (the
                // request's `id`, echoed) is the client's to make long.
                self.scanned = 0;
                Pending::ErrorObject
            }
            (1, b"result") if !self.error => {
                self.done = true;
                Pending::Nothing
            }
            (2, b"code") => Pending::Code,
            (2, b"data") => Pending::DataObject,
            (3, b"name") => Pending::Name,
            _ => Pending::Nothing,
        };
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
                self.string_byte(b);
                continue;
            }
            if self.in_code {
                if b.is_ascii_digit() {
                    let digit = i32::from(b - b'0');
                    let code = self.code.unwrap_or(0).saturating_mul(10).saturating_add(digit);
                    self.code = Some(code);
                    continue;
                }
                self.in_code = false;
                if self.negative {
                    self.code = self.code.map(|c| -c);
                }
            }
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                continue;
            }
            let pending = std::mem::take(&mut self.pending);
            match (pending, b) {
                (Pending::ErrorObject, b'{') => self.in_error = true,
                (Pending::ErrorObject, _) => {
                    // `"error": null` or a string: an error with no details.
                    self.done = true;
                    return;
                }
                (Pending::Code, b'-') => {
                    self.in_code = true;
                    self.negative = true;
                    continue;
                }
                (Pending::Code, b'0'..=b'9') => {
                    self.in_code = true;
                    self.code = Some(i32::from(b - b'0'));
                    continue;
                }
                (Pending::DataObject, b'{') => self.in_data = true,
                (Pending::Name, b'"') => {
                    self.in_string = true;
                    self.in_name = true;
                    self.name_len = 0;
                    continue;
                }
                _ => {}
            }
            if self.structural(b) {
                return;
            }
        }
    }

    /// A byte inside a string.
    fn string_byte(&mut self, b: u8) {
        if self.escape {
            self.escape = false;
            // An escaped key or name is none of ours.
            if self.capturing {
                self.key_len = u8::MAX;
            }
            if self.in_name {
                self.name_len = u8::MAX;
            }
        } else if b == b'\\' {
            self.escape = true;
        } else if b == b'"' {
            self.in_string = false;
            if self.capturing {
                self.capturing = false;
                self.after_key = true;
            }
            if self.in_name {
                self.in_name = false;
                self.name_done = true;
            }
        } else if self.capturing {
            let i = usize::from(self.key_len);
            if i < self.key.len() {
                self.key[i] = b;
                self.key_len += 1;
            } else {
                self.key_len = u8::MAX;
            }
        } else if self.in_name && self.name_len != u8::MAX {
            let i = usize::from(self.name_len);
            if i < NAME_MAX {
                self.name[i] = b;
                self.name_len += 1;
            } else {
                self.name_len = u8::MAX;
            }
        }
    }

    /// A byte outside strings and numbers; true when sniffing is over.
    fn structural(&mut self, b: u8) -> bool {
        match b {
            b'{' => {
                self.depth += 1;
                if self.tracked() {
                    self.expect_key = true;
                }
            }
            b'[' if self.depth == 0 => {
                // A batch or a bare array: not what Odoo answers.
                self.done = true;
                return true;
            }
            b'[' => self.depth += 1,
            b'}' | b']' => {
                match self.depth {
                    3 => self.in_data = false,
                    2 if self.in_error => {
                        // The error object is read: all there is to know.
                        self.done = true;
                        return true;
                    }
                    _ => {}
                }
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0 {
                    self.done = true;
                    return true;
                }
            }
            b'"' => {
                self.in_string = true;
                if self.expect_key && self.tracked() {
                    self.capturing = true;
                    self.expect_key = false;
                    self.key_len = 0;
                }
            }
            b':' if self.after_key && self.tracked() => {
                self.after_key = false;
                self.on_key();
                if self.done {
                    return true;
                }
            }
            b',' if self.tracked() => self.expect_key = true,
            _ if self.depth == 0 => {
                // Not an object at all.
                self.done = true;
                return true;
            }
            _ => {}
        }
        false
    }
}

/// The outcome of a request that ended with `status` written (0: none),
/// `error`, if any, and what its JSON-RPC answer said.
pub fn outcome(status: u16, error: Option<&Error>, rpc: RpcAnswer) -> Outcome {
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
        _ => match rpc {
            RpcAnswer::NoError => Outcome::Ok,
            RpcAnswer::ClientError => Outcome::JsonRpcClientError,
            RpcAnswer::Fault => Outcome::JsonRpcError,
        },
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

    /// An error body as `odoo/http.py` writes it (key order as Odoo's
    /// `json.dumps` of its dicts).
    fn odoo_error(code: u16, name: &str) -> String {
        format!(
            r#"{{"jsonrpc": "2.0", "id": 7, "error": {{"code": {code}, "message": "Odoo Server Error", "data": {{"name": "{name}", "debug": "Traceback (most recent call last):\n  File \"odoo/http.py\"", "message": "boom", "arguments": ["boom", {{"a": [1, 2]}}], "context": {{}}}}}}}}"#
        )
    }

    fn answer_of(chunks: &[&str]) -> RpcAnswer {
        let mut s = JsonRpcSniffer::start();
        for c in chunks {
            s.feed(c.as_bytes());
        }
        s.answer(&DEFAULT_CLIENT_EXCEPTIONS)
    }

    #[test]
    fn each_odoo_exception_gets_its_outcome() {
        let table: &[(u16, &str, RpcAnswer)] = &[
            (100, "odoo.http.SessionExpiredException", RpcAnswer::ClientError),
            (200, "odoo.exceptions.UserError", RpcAnswer::ClientError),
            (200, "odoo.exceptions.ValidationError", RpcAnswer::ClientError),
            (200, "odoo.exceptions.AccessError", RpcAnswer::ClientError),
            (200, "odoo.exceptions.AccessDenied", RpcAnswer::ClientError),
            (200, "odoo.exceptions.MissingError", RpcAnswer::ClientError),
            (200, "odoo.exceptions.RedirectWarning", RpcAnswer::ClientError),
            (404, "werkzeug.exceptions.NotFound", RpcAnswer::ClientError),
            (200, "builtins.ZeroDivisionError", RpcAnswer::Fault),
            (200, "builtins.KeyError", RpcAnswer::Fault),
            (200, "builtins.TypeError", RpcAnswer::Fault),
            (200, "psycopg2.errors.SerializationFailure", RpcAnswer::Fault),
            (200, "psycopg2.OperationalError", RpcAnswer::Fault),
            (200, "odoo.exceptions.CacheMiss", RpcAnswer::Fault),
            // A prefix or an extension of a listed name is not that name.
            (200, "odoo.exceptions.UserErrorX", RpcAnswer::Fault),
            (200, "odoo.exceptions.User", RpcAnswer::Fault),
        ];
        for &(code, name, want) in table {
            let body = odoo_error(code, name);
            assert_eq!(answer_of(&[&body]), want, "{name}");
            for cut in [1, 20, 40, 60, 80, body.len() - 1] {
                assert_eq!(
                    answer_of(&[&body[..cut], &body[cut..]]),
                    want,
                    "{name} split at {cut}"
                );
            }
        }
    }

    #[test]
    fn the_code_speaks_for_a_missing_name_and_the_list_is_the_policys() {
        // Odoo's special codes without a readable name.
        assert_eq!(
            answer_of(&[r#"{"id":1,"error":{"code":100,"message":"Odoo Session Expired"}}"#]),
            RpcAnswer::ClientError
        );
        assert_eq!(
            answer_of(&[r#"{"id":1,"error":{"code":404,"data":{"name":"x\u0041"}}}"#]),
            RpcAnswer::ClientError
        );
        assert_eq!(answer_of(&[r#"{"id":1,"error":{"code":200}}"#]), RpcAnswer::Fault);
        assert_eq!(answer_of(&[r#"{"id":1,"error":null}"#]), RpcAnswer::Fault);
        assert_eq!(
            answer_of(&[r#"{"id":1,"error":{"code":-32600}}"#]),
            RpcAnswer::Fault
        );
        // A name after a long message is still found; an escaped one is not
        // a listed name; keys of other objects named alike are not read.
        let long = format!(
            r#"{{"error":{{"code":200,"message":"{}","data":{{"name":"odoo.exceptions.UserError"}}}}}}"#,
            "m".repeat(1000)
        );
        assert_eq!(answer_of(&[&long]), RpcAnswer::ClientError);
        assert_eq!(
            answer_of(&[r#"{"error":{"code":200,"data":{"name":"odoo.exceptions.User\u0045rror"}}}"#]),
            RpcAnswer::Fault
        );
        assert_eq!(
            answer_of(&[
                r#"{"error":{"code":200,"context":{"name":"odoo.exceptions.UserError"},"data":{"name":"builtins.KeyError"}}}"#
            ]),
            RpcAnswer::Fault
        );
        assert_eq!(
            answer_of(&[r#"{"error":{"code":200,"data":{"context":{"name":"odoo.exceptions.UserError"}}}}"#]),
            RpcAnswer::Fault
        );
        assert_eq!(
            answer_of(&[r#"{"id":1,"result":{"error":{"code":100}}}"#]),
            RpcAnswer::NoError
        );
        // The policy's own list: without UserError in it, a UserError is a fault.
        let mut s = JsonRpcSniffer::start();
        s.feed(odoo_error(200, "odoo.exceptions.UserError").as_bytes());
        assert_eq!(s.answer(&["odoo.exceptions.AccessError"]), RpcAnswer::Fault);
        assert_eq!(s.answer(&["odoo.exceptions.UserError"]), RpcAnswer::ClientError);
        assert_eq!(s.code(), Some(200));
        assert_eq!(s.name(), Some(b"odoo.exceptions.UserError".as_slice()));
        // A long `id` before the error (the client's to choose) does not
        // push the name out of reach; a name cut off by the budget is none.
        let long_id = format!(
            r#"{{"jsonrpc":"2.0","id":"{}","error":{{"code":200,"message":"Odoo Server Error","data":{{"name":"odoo.exceptions.ValidationError"}}}}}}"#,
            "i".repeat(SNIFF_LIMIT as usize - 100)
        );
        assert_eq!(answer_of(&[&long_id]), RpcAnswer::ClientError);
        let mut s = JsonRpcSniffer::start();
        let cut = format!(
            r#"{{"error":{{"code":200,"message":"{}","data":{{"name":"odoo.exceptions.UserErrorAndMore"}}}}}}"#,
            "m".repeat(SNIFF_LIMIT as usize - 60)
        );
        s.feed(cut.as_bytes());
        assert_eq!(s.name(), None, "a name cut off by the budget");
        assert_eq!(s.answer(&DEFAULT_CLIENT_EXCEPTIONS), RpcAnswer::Fault);
        // A name longer than kept is no name of the list.
        let mut s = JsonRpcSniffer::start();
        let long_name = format!("odoo.exceptions.{}", "U".repeat(NAME_MAX));
        s.feed(odoo_error(200, &long_name).as_bytes());
        assert_eq!(s.name(), None);
        assert_eq!(s.answer(&[long_name.as_str()]), RpcAnswer::Fault);
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
        assert_eq!(outcome(200, None, RpcAnswer::NoError), Outcome::Ok);
        assert_eq!(outcome(101, None, RpcAnswer::NoError), Outcome::Ok);
        assert_eq!(outcome(200, None, RpcAnswer::Fault), Outcome::JsonRpcError);
        assert_eq!(
            outcome(200, None, RpcAnswer::ClientError),
            Outcome::JsonRpcClientError
        );
        assert_eq!(outcome(500, None, RpcAnswer::ClientError), Outcome::ServerError);
        assert_eq!(outcome(404, None, RpcAnswer::NoError), Outcome::ClientError);
        assert_eq!(outcome(503, None, RpcAnswer::NoError), Outcome::ServerError);
        assert_eq!(outcome(0, None, RpcAnswer::NoError), Outcome::ClientAbort);
        let e = |t: ErrorType, s: ErrorSource| match s {
            ErrorSource::Upstream => Error::new_up(t),
            ErrorSource::Downstream => Error::new_down(t),
            _ => Error::new_in(t),
        };
        assert_eq!(
            outcome(
                502,
                Some(&e(ErrorType::ConnectRefused, ErrorSource::Upstream)),
                RpcAnswer::NoError
            ),
            Outcome::ConnectFailure
        );
        assert_eq!(
            outcome(
                504,
                Some(&e(ErrorType::ReadTimedout, ErrorSource::Upstream)),
                RpcAnswer::NoError
            ),
            Outcome::Timeout
        );
        assert_eq!(
            outcome(
                502,
                Some(&e(ErrorType::ConnectionClosed, ErrorSource::Upstream)),
                RpcAnswer::NoError
            ),
            Outcome::Reset
        );
        assert_eq!(
            outcome(
                0,
                Some(&e(ErrorType::ConnectionClosed, ErrorSource::Downstream)),
                RpcAnswer::NoError
            ),
            Outcome::ClientAbort
        );
        assert_eq!(
            outcome(
                400,
                Some(&e(ErrorType::InvalidHTTPHeader, ErrorSource::Downstream)),
                RpcAnswer::NoError
            ),
            Outcome::ClientAbort
        );
    }
}
