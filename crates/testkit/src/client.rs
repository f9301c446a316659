//! Raw HTTP/1.1 over blocking sockets: send exact bytes, read exact responses.
//!
//! Tests of a proxy need to send what a well-behaved client never would
//! (smuggling attempts, bare LFs, slow heads), so these helpers take bytes,
//! not requests, and parse responses just enough to find where each ends.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A parsed response with its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: u8,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
    /// Body after de-chunking.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many times a header appears.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that reads responses one at a time.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// How long a helper waits for bytes before giving up (tests bound every wait).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

impl RawClient {
    /// Connects with the default read timeout.
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    /// Wraps a connected stream (one bound to a chosen source address, say),
    /// with the default read timeout.
    pub fn from_stream(stream: TcpStream) -> io::Result<Self> {
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    /// Changes the read timeout.
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))
    }

    /// The socket, for shutdown or peer checks.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a bodyless GET with a Host header.
    pub fn get(&mut self, path: &str) -> io::Result<RawResponse> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())?;
        self.read_response()
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads until at least `n` bytes are buffered.
    fn need(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads only a response head (status and headers), leaving the body.
    pub fn read_head(&mut self) -> io::Result<RawResponse> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let parsed = RawResponse {
                        status: resp.code.unwrap_or(0),
                        version: resp.version.unwrap_or(1),
                        headers: resp
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_owned(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                        body: Vec::new(),
                    };
                    self.buf.drain(..len);
                    return Ok(parsed);
                }
                Ok(httparse::Status::Partial) => {
                    if self.fill()? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "closed before a complete head; got {:?}",
                                String::from_utf8_lossy(&self.buf)
                            ),
                        ));
                    }
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
    }

    /// Reads one whole response to a request with method `method`.
    pub fn read_response_to(&mut self, method: &str) -> io::Result<RawResponse> {
        let mut resp = self.read_head()?;
        while (100..200).contains(&resp.status) {
            resp = self.read_head()?;
        }
        let no_body = method == "HEAD" || resp.status == 204 || resp.status == 304;
        if no_body {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let line = self.line()?;
                let text = String::from_utf8_lossy(&line);
                let size = usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size {text:?}"),
                    )
                })?;
                if size == 0 {
                    while !self.line()?.is_empty() {}
                    break;
                }
                self.need(size + 2)?;
                resp.body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len
                .trim()
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
            self.need(len)?;
            resp.body = self.buf.drain(..len).collect();
        } else {
            while self.fill()? > 0 {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    /// Reads one whole response to a non-HEAD request.
    pub fn read_response(&mut self) -> io::Result<RawResponse> {
        self.read_response_to("GET")
    }

    /// Reads whatever arrives until `needle` has been seen, returning it all.
    pub fn read_until(&mut self, needle: &[u8]) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(needle.len()).position(|w| w == needle) {
                let out = self.buf[..i + needle.len()].to_vec();
                self.buf.drain(..i + needle.len());
                return Ok(out);
            }
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Whether the server closed the connection within `within`: true on EOF
    /// or reset, false when the connection stays open that long.
    pub fn is_closed(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if self.stream.set_read_timeout(Some(left)).is_err() {
                return true;
            }
            match self.fill() {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

/// Sends bytes on a fresh connection and reads one response.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> io::Result<RawResponse> {
    let mut client = RawClient::connect(addr)?;
    client.send(bytes)?;
    client.read_response()
}

/// Sends bytes on a fresh connection and returns everything until close.
pub fn send_raw_until_close(addr: SocketAddr, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.write_all(bytes)?;
    let mut out = Vec::new();
    match stream.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(out),
        Err(e) => Err(e),
    }
}

/// Polls `check` every 10 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback address with a port free right now (bound, then released).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// An empty directory `inferlb-<name>-<pid>` under the system's temp dir,
/// emptied first if an earlier run left it. See [`Scratch`].
pub fn fresh_dir(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("inferlb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temp directory");
    Scratch(dir)
}

/// A test's scratch directory, removed when dropped — unless the test is
/// failing (the thread is panicking): then it stays, with its state files
/// and logs, and its path is printed.
#[derive(Debug)]
pub struct Scratch(std::path::PathBuf);

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    // The failing test's output is where its reader looks for the path.
    #[allow(clippy::print_stderr)]
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for a look", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Waits until something accepts connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    eventually(timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::fresh_dir;

    #[test]
    fn a_scratch_dir_goes_with_a_passing_test_and_stays_with_a_failing_one() {
        let passing = fresh_dir("scratch-passing");
        std::fs::write(passing.join("state.json"), "{}").unwrap();
        let path = passing.to_path_buf();
        drop(passing);
        assert!(!path.exists(), "{} was left behind", path.display());

        let failing = std::thread::spawn(|| {
            let dir = fresh_dir("scratch-failing");
            std::fs::write(dir.join("state.log"), "why it failed").unwrap();
            let path = dir.to_path_buf();
            std::panic::panic_any(path);
        })
        .join()
        .unwrap_err();
        let path = failing.downcast::<std::path::PathBuf>().unwrap();
        assert_eq!(
            std::fs::read_to_string(path.join("state.log")).unwrap(),
            "why it failed"
        );
        std::fs::remove_dir_all(*path).unwrap();
    }
}
