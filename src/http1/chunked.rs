//! A chunked body (RFC 9112 §7.1) checked as it streams by, a read at a
//! time, so that it can be forwarded as the bytes it came in: [`Chunked::feed`]
//! says how much of a read belongs to the body (the rest is the next
//! message, never forwarded with it), hands over each chunk's data (for the
//! upload-rate check and the JSON-RPC sniffer) and refuses what a strict
//! parser would: a size that is not hexadecimal or does not fit in 64 bits
//! (`0x5`, `-5`, `Z`, twenty `f`s), a line not ended by CRLF (a bare LF is
//! where parsers disagree), data longer than its size, control bytes in an
//! extension or a trailer.

use super::head::is_tchar;

/// Longest chunk-size line (size, extensions) and trailer section taken.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// Most trailer fields taken: as many as a head may have.
const MAX_TRAILER_FIELDS: usize = super::head::MAX_FIELDS;

/// Where a chunked body stands.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: State,
    /// Bytes of the current line (size line or trailer) so far.
    line: usize,
    /// Hex digits of the current size so far.
    digits: u8,
    /// The current chunk's size, then what is left of its data.
    size: u64,
    /// Bytes of trailer section so far.
    trailers: usize,
    /// Trailer fields so far.
    trailer_fields: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// In a chunk size's digits.
    #[default]
    Size,
    /// After the digits: spaces, then `;` or CR.
    AfterSize,
    /// In extensions (after a `;`), up to CR.
    Extension,
    /// After the size line's CR.
    SizeLf,
    /// In a chunk's data.
    Data,
    /// After the data: CR.
    DataCr,
    /// After the data's CR.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// In a trailer field's name, up to its colon.
    TrailerName,
    /// In a trailer field's value, up to CR.
    Trailer,
    /// After a trailer line's CR.
    TrailerLf,
    /// After the final CR.
    EndLf,
    /// The body is over.
    Done,
}

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk size that is not 1 to 16 hexadecimal digits.
    Size,
    /// A line not ended by CRLF, or a control byte where none may be.
    Syntax,
    /// A size line or trailer section longer than fledge takes.
    TooLong,
}

/// What one [`Chunked::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to the body.
    pub used: usize,
    /// The body ended within them.
    pub done: bool,
}

impl Chunked {
    /// A body about to begin.
    pub fn new() -> Chunked {
        Chunked::default()
    }

    /// Whether the body is over.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Check the next bytes of the body; `data` gets each run of chunk
    /// data among them. Stops at the body's end: what follows is not used.
    pub fn feed(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size => match hex(b) {
                    Some(d) => {
                        self.digits += 1;
                        if self.digits > 16 {
                            return Err(ChunkError::Size);
                        }
                        self.size = self.size << 4 | u64::from(d);
                        self.line(1)?;
                    }
                    None if self.digits == 0 => return Err(ChunkError::Size),
                    None => {
                        self.state = State::AfterSize;
                        continue;
                    }
                },
                State::AfterSize => {
                    self.line(1)?;
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b';' => self.state = State::Extension,
                        // Whitespace before an extension (RFC 9112's BWS).
                        b' ' | b'\t' => {}
                        // A size that goes on with something else.
                        b'!'..=b'~' => return Err(ChunkError::Size),
                        _ => return Err(ChunkError::Syntax),
                    }
                }
                State::Extension => {
                    self.line(1)?;
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        // Extensions are passed on, not understood: any
                        // visible byte, space or tab, nothing else.
                        b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                        _ => return Err(ChunkError::Syntax),
                    }
                }
                State::SizeLf => {
                    expect(b, b'\n')?;
                    self.line = 0;
                    self.digits = 0;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    let take = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    data(&input[i..i + take]);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    expect(b, b'\r')?;
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    expect(b, b'\n')?;
                    self.state = State::Size;
                }
                State::TrailerStart => {
                    self.trailer(1)?;
                    if b == b'\r' {
                        self.state = State::EndLf;
                    } else if is_tchar(b) {
                        self.trailer_fields += 1;
                        if self.trailer_fields > MAX_TRAILER_FIELDS {
                            return Err(ChunkError::TooLong);
                        }
                        self.state = State::TrailerName;
                    } else {
                        return Err(ChunkError::Syntax);
                    }
                }
                State::TrailerName => {
                    self.trailer(1)?;
                    if b == b':' {
                        self.state = State::Trailer;
                    } else if !is_tchar(b) {
                        return Err(ChunkError::Syntax);
                    }
                }
                State::Trailer => {
                    self.trailer(1)?;
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else if !is_field_byte(b) {
                        return Err(ChunkError::Syntax);
                    }
                }
                State::TrailerLf => {
                    self.trailer(1)?;
                    expect(b, b'\n')?;
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    expect(b, b'\n')?;
                    self.state = State::Done;
                    return Ok(Progress {
                        used: i + 1,
                        done: true,
                    });
                }
                State::Done => {
                    return Ok(Progress { used: i, done: true });
                }
            }
            i += 1;
        }
        Ok(Progress {
            used: i,
            done: self.state == State::Done,
        })
    }

    fn line(&mut self, n: usize) -> Result<(), ChunkError> {
        self.line += n;
        if self.line > MAX_LINE {
            return Err(ChunkError::TooLong);
        }
        Ok(())
    }

    fn trailer(&mut self, n: usize) -> Result<(), ChunkError> {
        self.trailers += n;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError::TooLong);
        }
        Ok(())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn expect(b: u8, want: u8) -> Result<(), ChunkError> {
    if b == want {
        Ok(())
    } else {
        Err(ChunkError::Syntax)
    }
}

/// A byte of a trailer field's value: visible, space, tab, or obs-text.
fn is_field_byte(b: u8) -> bool {
    matches!(b, b'\t' | b' '..=b'~' | 0x80..=0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `body` in pieces of `step` bytes: the data seen, the bytes used.
    fn run(body: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut c = Chunked::new();
        let mut seen = Vec::new();
        let mut used = 0;
        for piece in body.chunks(step) {
            let p = c.feed(piece, |d| seen.extend_from_slice(d))?;
            used += p.used;
            if p.done {
                return Ok((seen, used, true));
            }
        }
        Ok((seen, used, false))
    }

    #[test]
    fn a_body_is_read_to_its_end_and_no_further_in_any_pieces() {
        let body = b"5 ;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next HTTP/1.1\r\n";
        let end = body.len() - b"GET /next HTTP/1.1\r\n".len();
        for step in 1..=body.len() {
            let (seen, used, done) = run(body, step).unwrap();
            assert!(done, "step {step}");
            assert_eq!(used, end, "step {step}");
            assert_eq!(seen, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
        }
        let (_, used, done) = run(b"0\r\n\r\n", 64).unwrap();
        assert_eq!((used, done), (5, true));
        let (seen, used, done) = run(b"5\r\nhel", 64).unwrap();
        assert_eq!((seen.as_slice(), used, done), (&b"hel"[..], 6, false));
    }

    /// The chunked rows of `tests/hostile.rs`.
    #[test]
    fn what_the_hostile_table_sends_is_refused() {
        let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
        for (body, why) in [
            (format!("Z\r\nabc\r\n0\r\n\r\n{smuggled}"), ChunkError::Size),
            ("0x5\r\nhello\r\n0\r\n\r\n".to_owned(), ChunkError::Size),
            ("5 x\r\nhello\r\n0\r\n\r\n".to_owned(), ChunkError::Size),
            ("0\r\nhello\r\n\r\n".to_owned(), ChunkError::Syntax),
            ("0\r\n: v\r\n\r\n".to_owned(), ChunkError::Syntax),
            ("-5\r\nhello\r\n0\r\n\r\n".to_owned(), ChunkError::Size),
            (
                "ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n".to_owned(),
                ChunkError::Size,
            ),
            (format!("3\r\nabcdef\r\n0\r\n\r\n{smuggled}"), ChunkError::Syntax),
            (format!("0\n\r\n{smuggled}"), ChunkError::Syntax),
            ("5\nhello\r\n0\r\n\r\n".to_owned(), ChunkError::Syntax),
            ("5\r\nhello\n0\r\n\r\n".to_owned(), ChunkError::Syntax),
            ("5;a\0b\r\nhello\r\n0\r\n\r\n".to_owned(), ChunkError::Syntax),
            ("0\r\nX: a\nb\r\n\r\n".to_owned(), ChunkError::Syntax),
            (
                format!("5;{}\r\nhello\r\n", "e".repeat(MAX_LINE)),
                ChunkError::TooLong,
            ),
            (
                format!(
                    "0\r\n{}\r\n\r\n",
                    format!("X: {}\r\n", "y".repeat(200)).repeat(MAX_TRAILERS / 205 + 1)
                ),
                ChunkError::TooLong,
            ),
            (
                format!("0\r\n{}\r\n", "X: y\r\n".repeat(MAX_TRAILER_FIELDS + 1)),
                ChunkError::TooLong,
            ),
        ] {
            for step in [1, 3, body.len()] {
                assert_eq!(
                    run(body.as_bytes(), step).unwrap_err(),
                    why,
                    "{body:?} in steps of {step}"
                );
            }
        }
        // Sixteen digits fit; seventeen do not.
        let (_, _, done) = run(b"000000000000000a\r\n0123456789\r\n0\r\n\r\n", 7).unwrap();
        assert!(done);
        assert_eq!(run(b"0000000000000000a\r\n", 7).unwrap_err(), ChunkError::Size);
    }
}
