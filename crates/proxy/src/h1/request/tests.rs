//! Unit tests of request-head scanning, parsing and rewriting.

use super::*;

fn rewrite(head: &[u8]) -> Result<(RequestInfo, String), ErrorKind> {
    rewrite_allowing(head, &[])
}

fn rewrite_allowing(head: &[u8], upgrades: &[String]) -> Result<(RequestInfo, String), ErrorKind> {
    let mut id = RequestId::new();
    let mut out = Vec::new();
    let info = parse_and_rewrite(
        head,
        100,
        &Forwarding {
            client_ip: b"192.0.2.7",
            https: false,
            trusted: false,
            underscores: false,
            keep_claims: false,
            model_header: b"x-model",
            health_path: None,
            upgrades,
        },
        &mut id,
        &mut out,
    )?;
    Ok((info, String::from_utf8(out).unwrap()))
}

#[test]
fn scanner_finds_the_end_across_reads() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT";
    let mut scanner = HeadScanner::default();
    for end in 1..head.len() - 4 {
        if end < 27 {
            assert_eq!(scanner.scan(&head[..end]), Ok(None), "at {end}");
        }
    }
    assert_eq!(scanner.scan(head), Ok(Some(27)));
}

#[test]
fn scanner_refuses_bare_line_ends_and_nul() {
    for bad in [
        &b"GET / HTTP/1.1\n"[..],
        b"GET / HTTP/1.1\rX",
        b"GET /\0 HTTP/1.1\r\n",
    ] {
        assert_eq!(HeadScanner::default().scan(bad), Err(ErrorKind::BadRequest));
    }
    // A CR at the end of what has arrived is judged when the next byte comes.
    assert_eq!(HeadScanner::default().scan(b"GET / HTTP/1.1\r"), Ok(None));
}

#[test]
fn rewrite_adds_forwarding_headers_and_drops_hop_by_hop() {
    let (info, out) =
        rewrite(b"POST /v1 HTTP/1.1\r\nHost: h\r\nConnection: x-a\r\nX-A: 1\r\nContent-Length: 3\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n")
            .unwrap();
    assert_eq!(info.body, Framing::Length(3));
    assert!(info.keep_alive);
    assert!(out.starts_with("POST /v1 HTTP/1.1\r\nHost: h\r\n"));
    assert!(!out.contains("X-A"));
    assert!(!out.to_ascii_lowercase().contains("connection"));
    assert!(out.contains("Content-Length: 3\r\n"));
    // The client is not a trusted proxy: its X-Forwarded-For is replaced.
    assert!(out.contains("X-Forwarded-For: 192.0.2.7\r\n"));
    assert!(out.contains("X-Forwarded-Proto: http\r\n"));
    assert!(out.ends_with("\r\n\r\n"));
}

#[test]
fn keep_alive_follows_version_and_connection() {
    assert!(
        !rewrite(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .unwrap()
            .0
            .keep_alive
    );
    assert!(!rewrite(b"GET / HTTP/1.0\r\n\r\n").unwrap().0.keep_alive);
    let (info, _) = rewrite(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
    assert!(info.keep_alive);
    assert!(info.needs_host);
}

#[test]
fn identical_content_lengths_are_one() {
    let (info, out) =
        rewrite(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 4, 4\r\n\r\n")
            .unwrap();
    assert_eq!(info.body, Framing::Length(4));
    assert_eq!(out.matches("Content-Length").count(), 1);
}

#[test]
fn transfer_codings_are_classified() {
    assert_eq!(transfer_encoding(&[b"chunked"]), Ok(()));
    assert_eq!(transfer_encoding(&[b" Chunked "]), Ok(()));
    assert_eq!(
        transfer_encoding(&[b"gzip, chunked"]),
        Err(ErrorKind::NotImplemented)
    );
    assert_eq!(
        transfer_encoding(&[b"gzip", b"chunked"]),
        Err(ErrorKind::NotImplemented)
    );
    assert_eq!(
        transfer_encoding(&[b"chunked, gzip"]),
        Err(ErrorKind::BadRequest)
    );
    assert_eq!(
        transfer_encoding(&[b"chunked", b"chunked"]),
        Err(ErrorKind::BadRequest)
    );
    assert_eq!(transfer_encoding(&[b"gzip"]), Err(ErrorKind::BadRequest));
    assert_eq!(
        transfer_encoding(&[b"foo, chunked"]),
        Err(ErrorKind::BadRequest)
    );
}

#[test]
fn versions_are_told_apart() {
    assert_eq!(
        version_error(b"GET / HTTP/2.0\r\n"),
        ErrorKind::VersionNotSupported
    );
    assert_eq!(
        version_error(b"GET / HTTP/2\r\n"),
        ErrorKind::VersionNotSupported
    );
    assert_eq!(version_error(b"GET / HTTP/1.x\r\n"), ErrorKind::BadRequest);
    assert_eq!(version_error(b"GET / FOO\r\n"), ErrorKind::BadRequest);
}

#[test]
fn request_ids_are_kept_when_sane() {
    let (_, out) = rewrite(b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc\r\n\r\n").unwrap();
    assert!(out.contains("X-Request-Id: abc\r\n"));
    let long = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: {}\r\n\r\n",
        "a".repeat(200)
    );
    let (_, out) = rewrite(long.as_bytes()).unwrap();
    let id = out
        .split("X-Request-Id: ")
        .nth(1)
        .unwrap()
        .split("\r\n")
        .next()
        .unwrap();
    assert_eq!(id.len(), 32);
}

#[test]
fn an_allowed_upgrade_goes_to_the_replica_with_its_switch() {
    let allowed = ["websocket".to_owned()];
    let head = b"GET /v1/realtime?model=org%2Fm HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Key: k\r\n\r\n";
    let (info, out) = rewrite_allowing(head, &allowed).unwrap();
    assert!(info.upgrade);
    assert!(info.model_in_query);
    assert_eq!(info.model.unwrap().in_head(head), b"org%2Fm");
    assert!(
        out.contains("Connection: upgrade\r\nUpgrade: WebSocket\r\n"),
        "{out}"
    );
    assert!(out.contains("Sec-WebSocket-Key: k\r\n"), "{out}");
    assert_eq!(out.matches("pgrade").count(), 2, "{out}");
    // The model header wins over the query.
    let head = b"GET /v1/realtime?model=a HTTP/1.1\r\nHost: h\r\nX-Model: b\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    let (info, _) = rewrite_allowing(head, &allowed).unwrap();
    assert!(!info.model_in_query);
    assert_eq!(info.model.unwrap().in_head(head), b"b");
}

#[test]
fn other_upgrades_are_dropped_as_hop_by_hop() {
    let allowed = ["websocket".to_owned()];
    for head in [
        // Not allowed, or one protocol of the list not allowed.
        &b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c, websocket\r\n\r\n",
        // No `Connection: upgrade`, a body, HTTP/1.0, not a GET.
        b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
    ] {
        let (info, out) = rewrite_allowing(head, &allowed).unwrap();
        assert!(!info.upgrade, "{}", String::from_utf8_lossy(head));
        assert!(!out.to_ascii_lowercase().contains("upgrade"), "{out}");
    }
    // Nothing allowed: not even a WebSocket.
    let (info, _) =
        rewrite(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            .unwrap();
    assert!(!info.upgrade);
}
