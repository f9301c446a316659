//! The control plane's GET client against servers that frame their answers
//! each way HTTP allows: a metrics endpoint that keeps the connection open
//! after a Content-Length answer is read whole (it used to read as no data),
//! chunked and close-delimited bodies too, and a kept connection is reused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use inferlb_control::engine_metrics;
use inferlb_control::health;
use inferlb_control::http::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PAGE: &str =
    "vllm:num_requests_waiting 3\nvllm:num_requests_running 2\nvllm:kv_cache_usage_perc 0.5\n";

/// How a test server frames its answer.
#[derive(Clone, Copy)]
enum Framing {
    /// Content-Length, connection kept open.
    KeepAlive,
    /// Chunked, connection kept open.
    Chunked,
    /// No length: the body ends when the server closes.
    Close,
}

/// Serves `PAGE` (or `status` with a short body) on every request of every
/// connection, counting connections.
async fn server(framing: Framing, status: u16) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let body = if status == 200 { PAGE } else { "no" };
                        let answer = match framing {
                            Framing::KeepAlive => format!(
                                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            ),
                            Framing::Chunked => {
                                let (a, b) = body.split_at(body.len() / 2);
                                format!(
                                    "HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
                                    a.len(),
                                    b.len()
                                )
                            }
                            Framing::Close => {
                                format!("HTTP/1.1 {status} X\r\nConnection: close\r\n\r\n{body}")
                            }
                        };
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        if matches!(framing, Framing::Close) {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, connections)
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_kept_alive_content_length_page_is_read_and_its_connection_reused() {
    let (addr, connections) = server(Framing::KeepAlive, 200).await;
    let client = Client::new("test");
    for _ in 0..3 {
        let page = engine_metrics::fetch(&client, addr, "/metrics", TIMEOUT).await;
        assert_eq!(page.as_deref(), Some(PAGE));
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1, "one kept connection");
    let load = engine_metrics::parse(PAGE, inferlb_core::pool::Flavor::Auto).unwrap();
    assert_eq!((load.waiting, load.running, load.kv_usage), (3.0, 2.0, 0.5));
}

#[tokio::test]
async fn chunked_and_close_delimited_pages_are_read() {
    for framing in [Framing::Chunked, Framing::Close] {
        let (addr, _) = server(framing, 200).await;
        let client = Client::new("test");
        let page = engine_metrics::fetch(&client, addr, "/metrics", TIMEOUT).await;
        assert_eq!(page.as_deref(), Some(PAGE));
    }
}

#[tokio::test]
async fn a_scrape_that_is_not_200_gives_no_page() {
    let (addr, _) = server(Framing::KeepAlive, 503).await;
    let client = Client::new("test");
    assert_eq!(
        engine_metrics::fetch(&client, addr, "/metrics", TIMEOUT).await,
        None
    );
}

#[tokio::test]
async fn health_checks_pass_on_2xx_and_3xx_over_a_kept_connection_and_fail_otherwise() {
    for (status, passes) in [(200, true), (302, true), (404, false), (503, false)] {
        let (addr, connections) = server(Framing::KeepAlive, status).await;
        let client = Client::new("test");
        for _ in 0..2 {
            assert_eq!(
                health::check(&client, addr, "/health", TIMEOUT).await,
                passes,
                "{status}"
            );
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "{status}: one kept connection"
        );
    }
    // Nobody listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert!(!health::check(&Client::new("test"), closed, "/health", TIMEOUT).await);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = Client::new("test");
    let started = std::time::Instant::now();
    let page = engine_metrics::fetch(&client, addr, "/metrics", Duration::from_millis(300)).await;
    assert_eq!(page, None);
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(listener);
}
