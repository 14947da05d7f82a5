//! Data plane → a thread of its own: the access log (`log.access: true`),
//! one JSON object a line on stdout per request, for a platform's log
//! collector (the process's own log stays on stderr).
//!
//! Off the request's budget: a request's last step (`FledgeProxy::record`)
//! fills a fixed-size `Entry` (no allocation: the tenant's name is a
//! shared `Arc<str>`, the path is copied into the entry) and puts it in a
//! bounded queue without waiting; one writer thread drains the queue every
//! 50 ms, formats the lines and writes them out in one go. When
//! the writer falls behind (stdout blocked by a stuck collector), entries
//! are dropped and counted (`fledge_access_log_dropped_total`): a request
//! never waits on the log.
//!
//! Each logged request gets a request id, passed to its worker as
//! `X-Request-Id` so that Odoo's side can be matched to fledge's line.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::routing::Version;
use crate::vocab::Outcome;

/// Entries waiting for the writer, at most (about 2 MiB, allocated when
/// the log is first turned on): 160 000 requests a second between drains.
const QUEUE: usize = 8 * 1024;

/// How often the writer drains the queue: lines reach stdout this late at
/// most, and no request ever wakes the writer.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// Bytes of a request's path kept (its query is never logged: Odoo puts
/// tokens there, as in `/web/reset_password?token=…`).
const PATH: usize = 128;

/// One request, as logged.
pub(crate) struct Entry {
    /// When it ended, in microseconds since the Unix epoch.
    pub(crate) at_us: u64,
    pub(crate) request_id: u64,
    pub(crate) tenant: Option<Arc<str>>,
    pub(crate) version: Option<Version>,
    pub(crate) worker: Option<SocketAddr>,
    pub(crate) client: Option<IpAddr>,
    pub(crate) method: http::Method,
    pub(crate) path: Path,
    pub(crate) status: u16,
    pub(crate) outcome: Option<Outcome>,
    pub(crate) duration_us: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
}

/// The first [`PATH`] bytes of a path, inline.
pub(crate) struct Path {
    bytes: [u8; PATH],
    len: u8,
    cut: bool,
}

impl Path {
    /// `path` without its query, cut at [`PATH`] bytes.
    pub(crate) fn new(path: &str) -> Path {
        let path = path.split('?').next().unwrap_or_default().as_bytes();
        let len = path.len().min(PATH);
        let mut bytes = [0u8; PATH];
        bytes[..len].copy_from_slice(&path[..len]);
        Path {
            bytes,
            len: len as u8,
            cut: path.len() > PATH,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Lines written and entries dropped, for the metrics.
static WRITTEN: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The writer's channel, made (and its thread started) by the first entry:
/// the access log can be turned on by a reload.
static SINK: OnceLock<SyncSender<Entry>> = OnceLock::new();

/// Request ids: a random start per process, then one more per request.
static NEXT_ID: OnceLock<AtomicU64> = OnceLock::new();

/// A new request id (unique in the process; across processes, unlikely to
/// meet: each starts at a random 64-bit number).
/// Never 0 (a context's "no id").
pub(crate) fn next_id() -> u64 {
    let next = NEXT_ID.get_or_init(|| AtomicU64::new(fastrand::u64(..)));
    match next.fetch_add(1, Relaxed) {
        0 => next.fetch_add(1, Relaxed),
        id => id,
    }
}

/// A request id as sent upstream and logged: 16 hexadecimal digits.
pub(crate) fn format_id(id: u64, out: &mut [u8; 16]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((id >> (60 - 4 * i)) & 0xf) as usize];
    }
    // Only ASCII digits were written.
    std::str::from_utf8(out).unwrap_or_default()
}

/// Hand `entry` to the writer; dropped (and counted) if it is behind.
pub(crate) fn log(entry: Entry) {
    let sink = SINK.get_or_init(|| {
        let (tx, rx) = sync_channel(QUEUE);
        if let Err(e) = std::thread::Builder::new()
            .name("fledge-access-log".to_owned())
            .spawn(move || {
                let _ = write_all(&rx, std::io::stdout());
            })
        {
            tracing::error!(error = %e, "cannot start the access log's writer");
        }
        tx
    });
    match sink.try_send(entry) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            DROPPED.fetch_add(1, Relaxed);
        }
    }
}

/// The writer: every [`DRAIN_EVERY`], formats every entry waiting and
/// writes them out in one go; until the channel closes (gives `out` back).
/// It is never woken by a request: a send is a slot written in the queue,
/// no more.
fn write_all<W: Write>(rx: &Receiver<Entry>, out: W) -> W {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = Line::default();
    loop {
        let open = loop {
            match rx.try_recv() {
                Ok(entry) => {
                    line.format(&entry);
                    if out.write_all(&line.buf).is_err() {
                        DROPPED.fetch_add(1, Relaxed);
                    } else {
                        WRITTEN.fetch_add(1, Relaxed);
                    }
                }
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        let _ = out.flush();
        if !open {
            // Flushed above: nothing is left in the buffer.
            return out.into_parts().0;
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}

/// A line being formatted, and the timestamp's date and time to the second
/// (formatted once a second, not once a line).
#[derive(Default)]
struct Line {
    buf: Vec<u8>,
    second: u64,
    stamp: String,
}

impl Line {
    /// `e` as a JSON line, in `self.buf`. Hand-written rather than through
    /// serde: the writer formats every request, and a derived serializer
    /// with its number and date formatting cost it several times more.
    fn format(&mut self, e: &Entry) {
        let second = e.at_us / 1_000_000;
        if second != self.second || self.stamp.is_empty() {
            let at = chrono::DateTime::from_timestamp(second as i64, 0).unwrap_or_default();
            self.stamp = at.format("%Y-%m-%dT%H:%M:%S").to_string();
            self.second = second;
        }
        let out = &mut self.buf;
        out.clear();
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b"{\"timestamp\":\"");
        out.extend_from_slice(self.stamp.as_bytes());
        let micros = e.at_us % 1_000_000;
        out.push(b'.');
        pad6(out, micros);
        out.extend_from_slice(b"Z\",\"request_id\":\"");
        let mut id = [0u8; 16];
        out.extend_from_slice(format_id(e.request_id, &mut id).as_bytes());
        out.extend_from_slice(b"\",\"client\":");
        match e.client {
            Some(ip) => {
                let _ = write!(out, "\"{}\"", ip.to_canonical());
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"tenant\":");
        string_or_null(out, e.tenant.as_deref());
        out.extend_from_slice(b",\"version\":");
        string_or_null(out, e.version.map(Version::as_str));
        out.extend_from_slice(b",\"worker\":");
        match e.worker {
            Some(w) => {
                let _ = write!(out, "\"{w}\"");
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"method\":");
        string(out, e.method.as_str().as_bytes());
        out.extend_from_slice(b",\"path\":\"");
        escaped(out, e.path.bytes());
        if e.path.cut {
            out.extend_from_slice("…".as_bytes());
        }
        out.extend_from_slice(b"\",\"status\":");
        out.extend_from_slice(num.format(e.status).as_bytes());
        out.extend_from_slice(b",\"outcome\":");
        string_or_null(out, e.outcome.map(Outcome::as_str));
        out.extend_from_slice(b",\"duration_ms\":");
        out.extend_from_slice(num.format(e.duration_us / 1000).as_bytes());
        out.push(b'.');
        let frac = e.duration_us % 1000;
        out.extend_from_slice(&[
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
        out.extend_from_slice(b",\"bytes_in\":");
        out.extend_from_slice(num.format(e.bytes_in).as_bytes());
        out.extend_from_slice(b",\"bytes_out\":");
        out.extend_from_slice(num.format(e.bytes_out).as_bytes());
        out.extend_from_slice(b"}\n");
    }
}

/// `n` (below a million) in six digits.
fn pad6(out: &mut Vec<u8>, n: u64) {
    let mut digits = [b'0'; 6];
    let mut n = n;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits);
}

fn string_or_null(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    escaped(out, s);
    out.push(b'"');
}

/// `s` inside a JSON string: `"`, `\\` and control characters escaped,
/// bytes that are not UTF-8 as U+FFFD.
fn escaped(out: &mut Vec<u8>, s: &[u8]) {
    let text = String::from_utf8_lossy(s);
    for &b in text.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0..=0x1f | 0x7f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
}

// === metrics ===

const LINES: &str = "fledge_access_log_lines_total";
const DROPPED_NAME: &str = "fledge_access_log_dropped_total";

/// Prometheus view of the access log's counts.
pub struct AccessLogExporter {
    descs: Vec<prometheus::core::Desc>,
}

impl AccessLogExporter {
    /// Export the process's access-log counts.
    pub fn new() -> Self {
        use crate::metrics::desc;
        AccessLogExporter {
            descs: vec![
                desc(LINES, "Access log lines written (log.access).", &[]),
                desc(
                    DROPPED_NAME,
                    "Access log entries dropped because the writer was behind (stdout blocked).",
                    &[],
                ),
            ],
        }
    }
}

impl Default for AccessLogExporter {
    fn default() -> Self {
        Self::new()
    }
}

impl prometheus::core::Collector for AccessLogExporter {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use crate::metrics::{counter, family};
        use prometheus::proto::MetricType::COUNTER;
        vec![
            family(
                LINES,
                &self.descs[0].help,
                COUNTER,
                vec![counter(&[], WRITTEN.load(Relaxed) as f64)],
            ),
            family(
                DROPPED_NAME,
                &self.descs[1].help,
                COUNTER,
                vec![counter(&[], DROPPED.load(Relaxed) as f64)],
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            at_us: 1_765_152_000_123_456,
            request_id: 0x00ab_cdef_0123_4567,
            tenant: Some(Arc::from("acme")),
            version: Some(Version::Canary),
            worker: Some("10.0.0.5:8069".parse().unwrap()),
            client: Some("::ffff:203.0.113.7".parse().unwrap()),
            method: http::Method::POST,
            path: Path::new("/web/dataset/call_kw/res.partner/read?token=secret"),
            status: 200,
            outcome: Some(Outcome::JsonRpcError),
            duration_us: 12_345,
            bytes_in: 210,
            bytes_out: 1_024,
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let mut line = Line::default();
        line.format(&entry());
        let line = line.buf;
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["timestamp"], "2025-12-08T00:00:00.123456Z");
        assert_eq!(v["request_id"], "00abcdef01234567");
        assert_eq!(v["client"], "203.0.113.7");
        assert_eq!(v["tenant"], "acme");
        assert_eq!(v["version"], "canary");
        assert_eq!(v["worker"], "10.0.0.5:8069");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/web/dataset/call_kw/res.partner/read", "no query");
        assert_eq!(v["status"], 200);
        assert_eq!(v["outcome"], "jsonrpc_error");
        assert_eq!(v["duration_ms"], 12.345);
        assert_eq!(v["bytes_in"], 210);
        assert_eq!(v["bytes_out"], 1024);
    }

    #[test]
    fn hostile_paths_stay_inside_their_string() {
        let mut e = entry();
        e.path = Path::new("/a\"b\\c\n{\"status\":1}\u{7f}é");
        e.tenant = None;
        e.outcome = None;
        let mut line = Line::default();
        line.format(&e);
        let v: serde_json::Value = serde_json::from_slice(&line.buf).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\n{\"status\":1}\u{7f}é");
        assert_eq!(v["status"], 200);
        assert!(v["tenant"].is_null() && v["outcome"].is_null());

        e.path = Path::new(&format!("/{}", "x".repeat(300)));
        line.format(&e);
        let v: serde_json::Value = serde_json::from_slice(&line.buf).unwrap();
        let path = v["path"].as_str().unwrap();
        assert!(path.ends_with('…') && path.len() == PATH + '…'.len_utf8());
    }

    #[test]
    fn ids_are_sixteen_hex_digits_and_differ() {
        let (a, b) = (next_id(), next_id());
        assert_ne!(a, b);
        let mut buf = [0u8; 16];
        assert_eq!(format_id(0x1f, &mut buf), "000000000000001f");
    }

    /// The writer writes what it is given, a line each, in order.
    #[test]
    fn the_writer_writes_every_entry_a_line() {
        let (tx, rx) = sync_channel(4);
        let writer = std::thread::spawn(move || write_all(&rx, Vec::new()));
        for status in [200, 404, 502] {
            let mut e = entry();
            e.status = status;
            tx.send(e).unwrap();
        }
        drop(tx);
        let out = writer.join().unwrap();
        let text = String::from_utf8(out).unwrap();
        let statuses: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["status"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(statuses, [200, 404, 502]);
    }
}
