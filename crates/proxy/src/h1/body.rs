//! One body framer for both directions: where a request or response body
//! ends (Content-Length, chunked, or the connection's close), checked as its
//! bytes arrive and never buffered here.
//!
//! The framer only says how many bytes at the start of its input belong to
//! the body; the caller moves them. A chunked body can also be handed over
//! de-chunked (for an HTTP/1.0 client): `take` reports the payload ranges.

use std::ops::Range;

use crate::h1::chunked::ChunkedDecoder;

/// How a body is delimited, as its head declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: a bodiless request; a response to HEAD, a 1xx, 204 or 304.
    None,
    Length(u64),
    Chunked,
    /// A response without framing: the body ends when the replica closes.
    UntilClose,
}

/// Why body bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Bad chunked framing.
    Malformed,
    /// Over the size limit or the chunk-extension cap.
    TooLarge,
}

impl BodyError {
    /// What the client is answered.
    pub(crate) fn kind(self) -> crate::error::ErrorKind {
        match self {
            Self::Malformed => crate::error::ErrorKind::BadRequest,
            Self::TooLarge => crate::error::ErrorKind::BodyTooLarge,
        }
    }
}

#[derive(Debug)]
enum State {
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// Tracks one body across reads.
#[derive(Debug)]
pub(crate) struct Body {
    state: State,
    /// Largest body accepted, chunk extensions included; `None` is no limit.
    limit: Option<u64>,
    /// Most chunk-extension bytes accepted over the whole body.
    max_extensions: Option<u64>,
    /// Payload bytes taken so far (a chunked body's framing not counted).
    payload: u64,
}

impl Body {
    /// A body with no limits (a response from a replica).
    pub(crate) fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(ChunkedDecoder::new()),
            Framing::UntilClose => State::UntilClose,
        };
        Self {
            state,
            limit: None,
            max_extensions: None,
            payload: 0,
        }
    }

    /// A request body: at most `limit` bytes (payload plus chunk
    /// extensions), with at most `max_extensions` bytes of extensions.
    pub(crate) fn limited(framing: Framing, limit: Option<u64>, max_extensions: usize) -> Self {
        Self {
            limit,
            max_extensions: Some(max_extensions as u64),
            ..Self::new(framing)
        }
    }

    /// Payload bytes taken so far: the body's decoded size up to here.
    pub(crate) fn payload_len(&self) -> u64 {
        self.payload
    }

    /// Whether the whole body has been taken.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Whether the body ends only when the sender closes.
    pub(crate) fn ends_at_close(&self) -> bool {
        matches!(self.state, State::UntilClose)
    }

    /// Takes the body bytes at the start of `input` and returns how many
    /// belong to the body: all of `input`, or fewer once the body is done
    /// (the rest is whatever follows the body). `payload` is called with
    /// the range of each run of payload bytes: for a chunked body the chunk
    /// data only, for any other framing the whole body.
    pub(crate) fn take(
        &mut self,
        input: &[u8],
        mut payload: impl FnMut(Range<usize>),
    ) -> Result<usize, BodyError> {
        let mut counted = 0;
        let mut payload = |range: Range<usize>| {
            counted += range.len() as u64;
            payload(range);
        };
        let n = match &mut self.state {
            State::Done => 0,
            State::Length(left) => {
                let n = input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                if *left == 0 {
                    self.state = State::Done;
                }
                payload(0..n);
                n
            }
            State::Chunked(decoder) => {
                let n = decoder
                    .feed(input, &mut payload)
                    .map_err(|_| BodyError::Malformed)?;
                let extensions = decoder.extension_len();
                if self.max_extensions.is_some_and(|max| extensions > max)
                    || self
                        .limit
                        .is_some_and(|limit| decoder.data_len() + extensions > limit)
                {
                    return Err(BodyError::TooLarge);
                }
                if decoder.is_done() {
                    self.state = State::Done;
                }
                n
            }
            State::UntilClose => {
                payload(0..input.len());
                input.len()
            }
        };
        self.payload += counted;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns (bytes taken,
    /// payload, done).
    fn run(mut body: Body, input: &[u8], step: usize) -> Result<(usize, Vec<u8>, bool), BodyError> {
        let mut taken = 0;
        let mut payload = Vec::new();
        while taken < input.len() && !body.is_done() {
            let piece = &input[taken..input.len().min(taken + step)];
            let n = body.take(piece, |r| payload.extend_from_slice(&piece[r]))?;
            taken += n;
            if n < piece.len() {
                break;
            }
        }
        Ok((taken, payload, body.is_done()))
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        for step in [1, 3, 100] {
            let (n, payload, done) = run(Body::new(Framing::Length(5)), b"helloGET", step).unwrap();
            assert_eq!((n, payload.as_slice(), done), (5, &b"hello"[..], true));
        }
    }

    #[test]
    fn a_chunked_body_reports_its_payload_and_its_end() {
        let input = b"5\r\nhello\r\n0\r\n\r\nNEXT";
        for step in [1, 4, 100] {
            let (n, payload, done) = run(Body::new(Framing::Chunked), input, step).unwrap();
            assert_eq!((n, payload.as_slice(), done), (15, &b"hello"[..], true));
        }
    }

    #[test]
    fn no_body_takes_nothing() {
        let mut body = Body::new(Framing::None);
        assert!(body.is_done());
        assert_eq!(body.take(b"GET", |_| panic!()).unwrap(), 0);
        assert!(Body::new(Framing::Length(0)).is_done());
    }

    #[test]
    fn until_close_takes_everything() {
        let mut body = Body::new(Framing::UntilClose);
        assert_eq!(body.take(b"abc", |_| {}).unwrap(), 3);
        assert!(body.ends_at_close());
        assert!(!body.is_done());
    }

    #[test]
    fn chunk_extensions_count_toward_the_limit_and_their_cap() {
        // 10 payload bytes fit a limit of 12; 10 + 4 extension bytes do not.
        let input = b"a;abc\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(
            run(Body::limited(Framing::Chunked, Some(12), 4096), input, 100),
            Err(BodyError::TooLarge)
        );
        assert!(run(Body::limited(Framing::Chunked, Some(14), 4096), input, 100).is_ok());
        // Many small extensions: each line is short, the total is capped.
        let mut many = Vec::new();
        for _ in 0..100 {
            many.extend_from_slice(
                b"1;xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\na\r\n",
            );
        }
        many.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(
            run(Body::limited(Framing::Chunked, None, 4096), &many, 64),
            Err(BodyError::TooLarge)
        );
        assert!(run(Body::new(Framing::Chunked), &many, 64).unwrap().2);
    }

    #[test]
    fn bad_chunks_are_malformed() {
        assert_eq!(
            run(Body::new(Framing::Chunked), b"zz\r\n", 100),
            Err(BodyError::Malformed)
        );
    }
}
