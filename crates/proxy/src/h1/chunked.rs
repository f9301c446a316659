//! An incremental, strict decoder of the chunked transfer coding.
//!
//! The proxy passes a chunked body through byte for byte, so this decoder's
//! job is to find where the body ends and to refuse anything another parser
//! could read differently (the root of request smuggling): sizes must be hex
//! digits only, lines must end in CRLF, and no NUL, bare CR or bare LF may
//! appear. Bytes are fed as they arrive; nothing is buffered here.
//!
//! ```text
//!  Size ──CR──▶ SizeLf ──LF──▶ Data(n) ──n bytes──▶ DataCr ─▶ DataLf ─▶ Size
//!   │ ';'                        │ n = 0
//!   ▼                            ▼
//!  Ext ──CR──▶ SizeLf        TrailerStart ──CR──▶ EndLf ──LF──▶ Done
//!                                │ other
//!                                ▼
//!                             TrailerName ──:──▶ TrailerValue ──CR──▶ TrailerLf ──LF──▶ TrailerStart
//! ```

use std::ops::Range;

/// Longest chunk-size line (digits and extensions) and longest trailer
/// section accepted; real clients send a few bytes of each.
const MAX_LINE: usize = 4096;
/// Hex digits in a size; 15 keep the size below 2⁶⁰.
const MAX_SIZE_DIGITS: u8 = 15;

/// Enough of a trailer field's name to tell a refused one.
const NAME_KEPT: usize = 17;
/// Fields a trailer may not carry (RFC 9110 §6.5.1): framing, and routing.
const REFUSED_TRAILERS: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"host"];

/// A `tchar` of a field name (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A chunked body that cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// Tracks one chunked body across reads.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    line: usize,
    trailer: usize,
    /// The trailer field name being read, lowercase, as far as it fits.
    name: [u8; NAME_KEPT],
    name_len: usize,
    data: u64,
    extensions: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub(crate) fn new() -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailer: 0,
            name: [0; NAME_KEPT],
            name_len: 0,
            data: 0,
            extensions: 0,
        }
    }

    /// Counts a trailer byte against [`MAX_LINE`].
    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer += 1;
        if self.trailer > MAX_LINE {
            return Err(ChunkError);
        }
        Ok(())
    }

    /// Whether the last chunk and the trailer section have been seen.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Payload bytes seen so far (the decoded body size).
    pub(crate) fn data_len(&self) -> u64 {
        self.data
    }

    /// Chunk-extension bytes seen so far (each `;` and what follows it on a
    /// size line), over the whole body.
    pub(crate) fn extension_len(&self) -> u64 {
        self.extensions
    }

    /// Consumes bytes of `input` up to the end of the body, calling `on_data`
    /// with the range of each run of payload bytes. Returns how many bytes
    /// belong to the body; fewer than `input.len()` only once done.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(Range<usize>),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let take = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                on_data(i..i + take);
                i += take;
                self.size -= take as u64;
                self.data += take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::Done, _) => {
                    return Ok(i - 1);
                }
                (State::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    if self.digits == MAX_SIZE_DIGITS {
                        return Err(ChunkError);
                    }
                    let digit = (b as char).to_digit(16).ok_or(ChunkError)?;
                    self.size = self.size * 16 + u64::from(digit);
                    self.digits += 1;
                    State::Size
                }
                (State::Size, b';') if self.digits > 0 => {
                    self.extensions += 1;
                    State::Ext
                }
                (State::Size, b'\r') if self.digits > 0 => State::SizeLf,
                (State::Ext, b'\r') => State::SizeLf,
                (State::Ext, 0 | b'\n') => return Err(ChunkError),
                (State::Ext, _) => {
                    self.extensions += 1;
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(ChunkError);
                    }
                    State::Ext
                }
                (State::SizeLf, b'\n') => {
                    self.digits = 0;
                    self.line = 0;
                    if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    }
                }
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => State::Size,
                (State::TrailerStart, b'\r') => State::EndLf,
                // Each trailer line is a field (RFC 9112 §7.1.2): a name of
                // token characters, a colon, a value; not a folded line, not
                // a bare line, not a framing or routing field.
                (State::TrailerStart | State::TrailerName, b) if is_tchar(b) => {
                    if self.state == State::TrailerStart {
                        self.name_len = 0;
                    }
                    if self.name_len < NAME_KEPT {
                        self.name[self.name_len] = b.to_ascii_lowercase();
                    }
                    self.name_len += 1;
                    self.count_trailer()?;
                    State::TrailerName
                }
                (State::TrailerName, b':') => {
                    let name = &self.name[..self.name_len.min(NAME_KEPT)];
                    if self.name_len <= NAME_KEPT && REFUSED_TRAILERS.contains(&name) {
                        return Err(ChunkError);
                    }
                    self.count_trailer()?;
                    State::TrailerValue
                }
                (State::TrailerValue, b'\r') => State::TrailerLf,
                (State::TrailerValue, 0 | b'\n') => return Err(ChunkError),
                (State::TrailerValue, _) => {
                    self.count_trailer()?;
                    State::TrailerValue
                }
                (State::TrailerLf, b'\n') => State::TrailerStart,
                (State::EndLf, b'\n') => State::Done,
                _ => return Err(ChunkError),
            };
            if self.state == State::Done {
                return Ok(i);
            }
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[u8]) -> Result<(usize, Vec<u8>, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let n = d.feed(input, |r| out.extend_from_slice(&input[r]))?;
        Ok((n, out, d.is_done()))
    }

    #[test]
    fn decodes_and_stops_at_the_end() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET / HTTP/1.1";
        let (n, out, done) = decode(body).unwrap();
        assert!(done);
        assert_eq!(out, b"hello world");
        assert_eq!(&body[n..], b"GET / HTTP/1.1");
    }

    #[test]
    fn trailers_are_accepted() {
        let (_, out, done) = decode(b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n").unwrap();
        assert!(done);
        assert_eq!(out, b"abc");
        let two = b"0\r\ngrpc-status: 0\r\nX-Checksum:abc\r\nX-Empty:\r\n\r\n";
        assert!(decode(two).unwrap().2);
    }

    #[test]
    fn trailers_are_header_fields_and_never_framing() {
        for bad in [
            // A folded line (obs-fold).
            &b"0\r\nX-A: 1\r\n continued\r\n\r\n"[..],
            b"0\r\n\tX-A: 1\r\n\r\n",
            // A line that is not a field.
            b"0\r\nnot a field\r\n\r\n",
            b"0\r\nNoColon\r\n\r\n",
            b"0\r\n: no name\r\n\r\n",
            b"0\r\nX A: 1\r\n\r\n",
            // Framing and routing fields.
            b"0\r\nContent-Length: 5\r\n\r\n",
            b"0\r\ncontent-length:5\r\n\r\n",
            b"0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"0\r\nHost: other\r\n\r\n",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // A longer name that starts like a refused one is a field like any.
        assert!(decode(b"0\r\nContent-Length-X: 5\r\n\r\n").unwrap().2);
    }

    #[test]
    fn byte_at_a_time_gives_the_same_result() {
        let body = b"a\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        for (i, _) in body.iter().enumerate() {
            let n = d
                .feed(&body[i..=i], |r| out.extend_from_slice(&body[i..=i][r]))
                .unwrap();
            assert_eq!(n, 1);
        }
        assert!(d.is_done());
        assert_eq!(out, b"0123456789x");
    }

    #[test]
    fn extension_bytes_are_counted_across_chunks() {
        let mut d = ChunkedDecoder::new();
        d.feed(b"3;a=1\r\nabc\r\n2;bb\r\nde\r\n0\r\n\r\n", |_| {})
            .unwrap();
        assert!(d.is_done());
        assert_eq!(d.extension_len(), 4 + 3);
        assert_eq!(d.data_len(), 5);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for bad in [
            &b"g\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"-5\r\n",
            b"0x5\r\n",
            b"fffffffffffffffff\r\n",
            b"3;a\nb\r\n",
            b"0\r\nX: 1\n\r\n",
            b"0\r\nX\0: 1\r\n\r\n",
            b"5\r\nhello\r\r",
        ] {
            assert_eq!(
                decode(bad).map(|_| ()),
                Err(ChunkError),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
