//! The control plane's one HTTP client, for its GETs (health checks,
//! engine-metrics scrapes): hyper's client on the control thread's runtime,
//! so a replica's server chooses Content-Length, chunked or close-delimited
//! bodies and keep-alive, and each of them is read the way HTTP says.
//!
//! A connection the server keeps open is reused by the next GET of the same
//! replica (one idle connection per replica, closed after 30 s unused).

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How long an unused keep-alive connection to a replica is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What one GET gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The whole body, when it was read (see [`Client::get`]) and arrived
    /// complete within the limit.
    pub body: Option<Bytes>,
}

/// A GET client; cheap to clone (clones share the connection pool). Create
/// it on the runtime that uses it: its connections live there.
#[derive(Debug, Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Empty<Bytes>>,
    user_agent: &'static str,
}

impl Client {
    /// A client that names itself `user_agent` to replicas.
    pub fn new(user_agent: &'static str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(1)
            .build(connector);
        Self { inner, user_agent }
    }

    /// GETs `path` from `addr` within `timeout` (connect, head and body).
    /// The body is read, up to `max_body` bytes, only when `read_body` says
    /// so for the status (reading it lets the connection be reused). `None`
    /// when the replica
    /// could not be reached or its answer was not valid HTTP in time.
    pub async fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
        max_body: usize,
        read_body: impl FnOnce(u16) -> bool,
    ) -> Option<Answer> {
        let attempt = async {
            let request = hyper::Request::get(format!("http://{addr}{path}"))
                .header(hyper::header::USER_AGENT, self.user_agent)
                .header(hyper::header::ACCEPT, "text/plain, */*")
                .body(Empty::<Bytes>::new())
                .ok()?;
            let response = self.inner.request(request).await.ok()?;
            let status = response.status().as_u16();
            if !read_body(status) {
                // Dropping the unread body closes the connection instead
                // of pooling it; a health check's answer is its status.
                return Some(Answer { status, body: None });
            }
            // A body that fails (too long, cut short) leaves the status.
            let body = Limited::new(response.into_body(), max_body)
                .collect()
                .await
                .ok()
                .map(http_body_util::Collected::to_bytes);
            Some(Answer { status, body })
        };
        tokio::time::timeout(timeout, attempt).await.ok().flatten()
    }
}
