//! Hostile HTTP/2 clients (h2c with prior knowledge, raw frames): the
//! HTTP/2 rows of `docs/reliability.md` §3 — content-length against DATA,
//! malformed and misplaced pseudo-headers, connection-specific fields,
//! values that would inject an HTTP/1 line into the worker's request — and
//! the floods (rapid reset, CONTINUATION, PING, streams past the limit).
//! As in `hostile`, each case has its own tenant and counting worker, and
//! **no worker may see more requests than the client meant**: fledge speaks
//! HTTP/1.1 to workers, so an HTTP/2 field that smuggled CR LF into that
//! request would show as one more.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::hostile::proxy_with_workers;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types and flags (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal fields, never indexed, no Huffman: the bytes
/// go to the server exactly as written, however wrong.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x10);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// A request's fields for `host`: the four pseudo-headers, then `extra`.
fn request(method: &str, host: &str, extra: &[(&'static str, &'static str)]) -> Vec<(String, String)> {
    let mut fields = vec![
        (":method".to_owned(), method.to_owned()),
        (":scheme".to_owned(), "http".to_owned()),
        (":path".to_owned(), "/web/login".to_owned()),
        (":authority".to_owned(), host.to_owned()),
    ];
    fields.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    fields
}

fn headers(stream: u32, fields: &[(String, String)], end_stream: bool) -> Vec<u8> {
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &block(&pairs))
}

/// What came back for stream 1, or for the connection.
#[derive(Debug, Default)]
struct Answer {
    status: Option<u16>,
    reset: Option<u32>,
    goaway: Option<u32>,
    closed: bool,
    refused_streams: usize,
}

impl Answer {
    /// One word for the table: the status, `reset`, `goaway`, `closed` or
    /// `none` (no answer yet: the connection is still open).
    fn outcome(&self) -> String {
        match (self.status, self.reset, self.goaway) {
            (Some(s), _, _) => s.to_string(),
            (None, Some(_), _) => "reset".into(),
            (None, None, Some(_)) => "goaway".into(),
            _ if self.closed => "closed".into(),
            _ => "none".into(),
        }
    }
}

/// Open an h2c connection, send `frames` after the preface and an empty
/// SETTINGS, and read until stream 1 ends, the connection ends, or `quiet`
/// passes without a frame.
async fn exchange(addr: SocketAddr, frames: &[u8], quiet: Duration) -> Answer {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend_from_slice(frames);
    let (mut rd, mut wr) = tcp.split();
    // Write while reading: a flood may fill the socket before the server
    // answers, and the server may stop reading once it has had enough.
    let write = async {
        let _ = wr.write_all(&out).await;
    };
    let read = async {
        let mut answer = Answer::default();
        let mut decoder = hpack::Decoder::new();
        let mut pending = Vec::new();
        let mut block_of_1 = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while pending.len() >= 9 {
                let len = (usize::from(pending[0]) << 16)
                    | (usize::from(pending[1]) << 8)
                    | usize::from(pending[2]);
                if pending.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (pending[3], pending[4]);
                let stream =
                    u32::from_be_bytes([pending[5], pending[6], pending[7], pending[8]]) & 0x7fff_ffff;
                let payload: Vec<u8> = pending[9..9 + len].to_vec();
                pending.drain(..9 + len);
                match kind {
                    HEADERS | CONTINUATION => {
                        let mut body = &payload[..];
                        if kind == HEADERS && flags & PADDED != 0 {
                            let pad = usize::from(body[0]);
                            body = &body[1..body.len() - pad];
                        }
                        if kind == HEADERS && flags & PRIORITY != 0 {
                            body = &body[5..];
                        }
                        block_of_1.extend_from_slice(body);
                        if flags & END_HEADERS != 0 {
                            let fields = decoder.decode(&block_of_1).unwrap_or_default();
                            block_of_1.clear();
                            if stream == 1 && answer.status.is_none() {
                                answer.status = fields
                                    .iter()
                                    .find(|(n, _)| n == b":status")
                                    .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok());
                            }
                        }
                        if stream == 1 && flags & END_STREAM != 0 {
                            return answer;
                        }
                    }
                    DATA if stream == 1 && flags & END_STREAM != 0 => return answer,
                    RST_STREAM => {
                        let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                        if code == REFUSED_STREAM {
                            answer.refused_streams += 1;
                        }
                        if stream == 1 {
                            answer.reset = Some(code);
                            return answer;
                        }
                    }
                    GOAWAY => {
                        answer.goaway = Some(u32::from_be_bytes([
                            payload[4], payload[5], payload[6], payload[7],
                        ]));
                        return answer;
                    }
                    _ => {}
                }
            }
            let wait = if answer.status.is_none() {
                quiet.max(Duration::from_secs(5))
            } else {
                quiet
            };
            match tokio::time::timeout(wait, rd.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => pending.extend_from_slice(&buf[..n]),
                Ok(_) => {
                    answer.closed = true;
                    return answer;
                }
                Err(_) => return answer,
            }
        }
    };
    let ((), answer) = tokio::join!(write, read);
    answer
}

/// Builds a case's frames for its host name.
type Frames = Box<dyn Fn(&str) -> Vec<u8>>;

/// One case: its frames for `host`, the outcomes accepted and how many
/// requests the client meant (the most its worker may see).
pub(crate) struct Case {
    name: &'static str,
    frames: Frames,
    expect: &'static [&'static str],
    meant: u64,
}

/// Refused, whichever way HTTP/2 allows: 400, the stream reset, or the
/// connection ended.
const REFUSED: &[&str] = &["400", "reset", "goaway", "closed"];

fn case(
    name: &'static str,
    expect: &'static [&'static str],
    meant: u64,
    frames: impl Fn(&str) -> Vec<u8> + 'static,
) -> Case {
    Case {
        name,
        frames: Box::new(frames),
        expect,
        meant,
    }
}

/// A request whose fields are `fields(host)`, with no body.
fn get_with(fields: impl Fn(&str) -> Vec<(String, String)> + 'static) -> impl Fn(&str) -> Vec<u8> {
    move |h| headers(1, &fields(h), true)
}

/// A POST with `extra` fields and `data` as its one DATA frame.
fn post_with(
    extra: &'static [(&'static str, &'static str)],
    data: &'static [u8],
) -> impl Fn(&str) -> Vec<u8> {
    move |h| {
        let mut out = headers(1, &request("POST", h, extra), false);
        out.extend(frame(DATA, END_STREAM, 1, data));
        out
    }
}

/// The standard request with its field `name` replaced by `value`, or
/// removed (`None`).
fn changed(name: &'static str, value: Option<&'static str>) -> impl Fn(&str) -> Vec<(String, String)> {
    move |h| {
        let mut fields = request("GET", h, &[]);
        match value {
            Some(v) => fields
                .iter_mut()
                .filter(|(n, _)| n == name)
                .for_each(|f| f.1 = v.to_owned()),
            None => fields.retain(|(n, _)| n != name),
        }
        fields
    }
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        // The control: a well-formed request is served.
        case("h2 get", &["200"], 1, get_with(|h| request("GET", h, &[]))),
        case(
            "h2 post with a body",
            &["200"],
            1,
            post_with(&[("content-length", "5")], b"hello"),
        ),
        // Content-length against DATA (H2.CL).
        case(
            "h2 content-length shorter than data",
            REFUSED,
            1,
            post_with(&[("content-length", "5")], b"hello world"),
        ),
        case(
            "h2 content-length longer than data",
            REFUSED,
            1,
            post_with(&[("content-length", "20")], b"hello"),
        ),
        case(
            "h2 two content-lengths",
            REFUSED,
            0,
            post_with(&[("content-length", "5"), ("content-length", "6")], b"hello"),
        ),
        case(
            "h2 content-length not a number",
            REFUSED,
            0,
            post_with(&[("content-length", "5x")], b"hello"),
        ),
        case(
            "h2 content-length 0 with data",
            REFUSED,
            1,
            post_with(
                &[("content-length", "0")],
                b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
        ),
        // An HTTP/1 request inside the body stays a body (H2.TE-style desync).
        case(
            "h2 body holding an http/1 request",
            &["200"],
            1,
            post_with(&[], b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        ),
        // Connection-specific fields are malformed in HTTP/2 (RFC 9113 §8.2.2).
        case(
            "h2 transfer-encoding",
            REFUSED,
            0,
            post_with(&[("transfer-encoding", "chunked")], b"0\r\n\r\n"),
        ),
        case(
            "h2 connection",
            REFUSED,
            0,
            get_with(|h| request("GET", h, &[("connection", "keep-alive")])),
        ),
        case(
            "h2 keep-alive",
            REFUSED,
            0,
            get_with(|h| request("GET", h, &[("keep-alive", "timeout=5")])),
        ),
        case(
            "h2 upgrade",
            REFUSED,
            0,
            get_with(|h| request("GET", h, &[("upgrade", "websocket")])),
        ),
        case(
            "h2 te other than trailers",
            REFUSED,
            0,
            get_with(|h| request("GET", h, &[("te", "gzip")])),
        ),
        // Field names and values.
        case(
            "h2 upper-case name",
            REFUSED,
            0,
            get_with(|h| request("GET", h, &[("X-Upper", "1")])),
        ),
        case(
            "h2 colon inside a name",
            REFUSED,
            0,
            get_with(|h| request("GET", h, &[("x:evil", "1")])),
        ),
        case(
            "h2 space in a name",
            REFUSED,
            0,
            get_with(|h| request("GET", h, &[("x evil", "1")])),
        ),
        case(
            "h2 crlf in a value",
            REFUSED,
            0,
            get_with(|h| request("GET", h, &[("x-evil", "a\r\nX-Injected: 1")])),
        ),
        case(
            "h2 lf in a value",
            REFUSED,
            0,
            get_with(|h| request("GET", h, &[("x-evil", "a\nGET /smuggled HTTP/1.1")])),
        ),
        case(
            "h2 nul in a value",
            REFUSED,
            0,
            get_with(|h| request("GET", h, &[("x-evil", "a\0b")])),
        ),
        // Pseudo-headers (RFC 9113 §8.3).
        case("h2 no :method", REFUSED, 0, get_with(changed(":method", None))),
        case("h2 no :path", REFUSED, 0, get_with(changed(":path", None))),
        case("h2 no :scheme", REFUSED, 0, get_with(changed(":scheme", None))),
        case("h2 empty :path", REFUSED, 0, get_with(changed(":path", Some("")))),
        case(
            "h2 :path with a space",
            REFUSED,
            0,
            get_with(changed(":path", Some("/web/login HTTP/1.1"))),
        ),
        case(
            "h2 :path injecting a request line",
            REFUSED,
            0,
            get_with(changed(
                ":path",
                Some("/ HTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled"),
            )),
        ),
        case(
            "h2 :method injecting a request line",
            REFUSED,
            0,
            get_with(changed(":method", Some("GET / HTTP/1.1\r\n\r\nGET"))),
        ),
        case(
            "h2 :authority with crlf",
            REFUSED,
            0,
            get_with(changed(":authority", Some("x\r\nX-Injected: 1"))),
        ),
        case(
            "h2 unknown pseudo-header",
            REFUSED,
            0,
            get_with(|h| {
                let mut f = request("GET", h, &[]);
                f.push((":evil".into(), "1".into()));
                f
            }),
        ),
        case(
            "h2 pseudo-header after a field",
            REFUSED,
            0,
            get_with(|h| {
                let mut f = request("GET", h, &[("x-a", "1")]);
                let authority = f.remove(3);
                f.push(authority);
                f
            }),
        ),
        case(
            "h2 duplicate :path",
            REFUSED,
            0,
            get_with(|h| {
                let mut f = request("GET", h, &[]);
                f.insert(3, (":path".into(), "/smuggled".into()));
                f
            }),
        ),
        case(
            "h2 connect",
            &["400", "405", "501", "reset", "goaway", "closed"],
            0,
            get_with(|h| {
                vec![
                    (":method".into(), "CONNECT".into()),
                    (":authority".into(), h.to_owned()),
                ]
            }),
        ),
        // Host against :authority: routed by :authority or refused; routed
        // by Host, it would be a 404 (no such tenant).
        case(
            "h2 host differing from :authority",
            &["200", "400", "reset"],
            1,
            get_with(|h| request("GET", h, &[("host", "unknown.example.com")])),
        ),
        // Frames.
        case("h2 data on a stream never opened", REFUSED, 0, |_| {
            frame(DATA, END_STREAM, 1, b"hello")
        }),
        case("h2 headers on stream 0", REFUSED, 0, |h| {
            headers(0, &request("GET", h, &[]), true)
        }),
        case("h2 even stream id", REFUSED, 0, |h| {
            headers(2, &request("GET", h, &[]), true)
        }),
        case("h2 window update of 0", REFUSED, 0, |_| {
            frame(WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes())
        }),
        case("h2 window overflow", REFUSED, 0, |_| {
            let mut out = frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes());
            out.extend(frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()));
            out
        }),
        case("h2 undecodable header block", REFUSED, 0, |_| {
            frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0xff, 0xff, 0xff, 0xff])
        }),
        // Floods: bounded by the server, and nothing smuggled.
        case("h2 continuation flood", REFUSED, 0, |h| {
            let mut out = frame(
                HEADERS,
                0,
                1,
                &block(
                    &request("GET", h, &[])
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.as_str()))
                        .collect::<Vec<_>>(),
                ),
            );
            let filler = "a".repeat(1000);
            for i in 0..200 {
                let name = format!("x-filler-{i}");
                out.extend(frame(CONTINUATION, 0, 1, &block(&[(&name, &filler)])));
            }
            out
        }),
        case(
            "h2 rapid reset",
            &["goaway", "closed", "none", "reset"],
            500,
            |h| {
                let mut out = Vec::new();
                for i in 0..500u32 {
                    let id = 2 * i + 1;
                    out.extend(headers(id, &request("GET", h, &[]), true));
                    out.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
                }
                out
            },
        ),
        case("h2 ping flood", &["200", "goaway", "closed"], 1, |h| {
            let mut out = Vec::new();
            for i in 0..20_000u64 {
                out.extend(frame(PING, 0, 0, &i.to_be_bytes()));
            }
            out.extend(headers(1, &request("GET", h, &[]), true));
            out
        }),
        case("h2 settings flood", &["200", "goaway", "closed"], 1, |h| {
            let mut out = Vec::new();
            for _ in 0..20_000 {
                out.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]));
            }
            out.extend(headers(1, &request("GET", h, &[]), true));
            out
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http2_table_gets_its_outcomes_and_smuggles_nothing() {
    let cases = cases();
    let (proxy, workers) = proxy_with_workers(cases.len()).await;
    let runs = cases.iter().enumerate().map(|(i, c)| {
        let frames = (c.frames)(&format!("case{i}.example.com"));
        let addr = proxy.addr;
        async move { exchange(addr, &frames, Duration::from_millis(1500)).await }
    });
    let answers = futures_util::future::join_all(runs).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut wrong = Vec::new();
    for ((c, answer), worker) in cases.iter().zip(&answers).zip(&workers) {
        let outcome = answer.outcome();
        let seen = worker.stats().requests;
        let verdict = if !c.expect.contains(&outcome.as_str()) {
            "WRONG OUTCOME"
        } else if seen > c.meant {
            "SMUGGLED"
        } else {
            "ok"
        };
        if std::env::var_os("FLEDGE_TEST_VERBOSE").is_some() || verdict != "ok" {
            eprintln!(
                "{verdict:13} {:40} {outcome:6} (want {:?}), worker saw {seen} (meant {}): {answer:?}",
                c.name, c.expect, c.meant
            );
        }
        if verdict != "ok" {
            wrong.push(c.name);
        }
    }
    assert!(cases.len() >= 40, "the table has {} cases", cases.len());
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong: {wrong:?}\n{}",
        wrong.len(),
        cases.len(),
        proxy.log()
    );
    // After all of it, the proxy serves as before.
    let after = exchange(
        proxy.addr,
        &headers(1, &request("GET", "case0.example.com", &[]), true),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(after.status, Some(200), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_of_100_are_refused() {
    let (proxy, _workers) = proxy_with_workers(1).await;
    // 150 requests left open (no END_STREAM): the first 100 are taken,
    // the rest refused with RST_STREAM(REFUSED_STREAM).
    let mut frames = Vec::new();
    for i in 0..150u32 {
        frames.extend(headers(
            2 * i + 1,
            &request("POST", "case0.example.com", &[]),
            false,
        ));
    }
    let answer = exchange(proxy.addr, &frames, Duration::from_millis(1500)).await;
    assert_eq!(answer.refused_streams, 50, "{answer:?}");
}

/// The table through fledge, nginx and HAProxy (h2c, prior knowledge), one
/// case at a time against one counting worker. Prints a Markdown table
/// (and writes it to `FLEDGE_VERDICTS_OUT` when set). Not a gate:
/// `cargo test --test integration -- --ignored --nocapture http2_verdicts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a comparison to read, needs nginx and haproxy"]
async fn http2_verdicts_of_fledge_nginx_and_haproxy_side_by_side() {
    let crate::hostile::Comparison {
        worker,
        targets,
        mut out,
        proxy: _proxy,
        refs: _refs,
    } = crate::hostile::comparison(true).await;
    let mut differ = 0;
    for c in cases() {
        let frames = (c.frames)("case0.example.com");
        let mut outcomes = Vec::new();
        let mut cells = Vec::new();
        for (_, addr) in &targets {
            let before = worker.stats().requests;
            let answer = exchange(*addr, &frames, Duration::from_millis(1500)).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let seen = worker.stats().requests - before;
            cells.push(format!("{} ({seen})", answer.outcome()));
            outcomes.push(answer.outcome());
        }
        if outcomes.iter().any(|o| *o != outcomes[0]) {
            differ += 1;
        }
        out += &format!("| {} | {} |\n", c.name, cells.join(" | "));
    }
    out += &format!(
        "\nOutcome (requests the worker saw): a status, `reset` (RST_STREAM on the request's stream), \
         `goaway` (the connection refused), `closed` or `none` (no answer in 1.5 s). \
         {differ} of {} cases differ.\n",
        cases().len()
    );
    println!("{out}");
    if let Some(path) = std::env::var_os("FLEDGE_VERDICTS_OUT") {
        std::fs::write(path, &out).unwrap();
    }
}
