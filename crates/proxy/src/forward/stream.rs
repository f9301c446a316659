//! Streaming a response to the client as each read arrives, and what is
//! left to do with both connections afterwards.

use super::*;

/// Sends the response head and streams the body, each read written to the
/// client as it arrives. Returns whether the upstream connection may carry
/// another request: never when bytes followed the body.
pub(super) async fn stream(
    worker: &Worker,
    client: &mut Client,
    conn: &mut UpstreamConn,
    info: &RequestInfo,
    resp: &ResponseInfo,
    stats: &ReplicaStats,
) -> Result<bool, Abort> {
    let timeout = worker.config.timeouts.body_read;
    let mut body = Body::new(resp.body);
    // An HTTP/1.0 client cannot read chunked framing: it gets the payload.
    let dechunk = resp.body == Framing::Chunked && info.minor == 0;
    // Body bytes that arrived with the head ride in the head's write.
    let early = conn.buf.len() - resp.head_len;
    // Nothing has reached the client yet: a body that is already invalid
    // is the replica's failure, answered 502 rather than a bare close.
    let taken = take_into(
        &mut body,
        &conn.buf[resp.head_len..],
        dechunk,
        &mut client.out,
    )
    .map_err(|_| Abort::Respond(ErrorKind::UpstreamFailed))?;
    let mut trailing = taken < early;
    conn.buf.clear();
    if let Some(log) = client.log.as_deref_mut() {
        log.streamed = matches!(resp.body, Framing::Chunked | Framing::UntilClose);
        log.head_sent();
        if taken > 0 {
            log.body_sent();
        }
    }
    client.write_out(worker, timeout).await?;
    while !body.is_done() {
        if stats.is_evicted() {
            // The replica's drain timed out: cut what is still flowing.
            return Err(Abort::AfterHead);
        }
        conn.buf.clear();
        let n = match watch::read(worker, conn, &client.stream, stats, timeout).await {
            Io::Done(n) => n,
            Io::Eof if body.ends_at_close() => return Ok(false),
            Io::ClientGone => return Err(Abort::ClientGone),
            _ => return Err(Abort::AfterHead),
        };
        stats.add_bytes_in(n);
        if dechunk {
            client.out.clear();
            let taken = take_into(&mut body, &conn.buf[..n], true, &mut client.out)?;
            trailing |= taken < n;
            if let Some(log) = client.log.as_deref_mut() {
                log.body_sent();
            }
            client.write_out(worker, timeout).await?;
        } else {
            let taken = body
                .take(&conn.buf[..n], |_| {})
                .map_err(|_| Abort::AfterHead)?;
            trailing |= taken < n;
            if taken > 0 {
                let buf = std::mem::take(&mut conn.buf);
                conn.buf = client.write_prefix(worker, buf, taken, timeout).await?;
            }
        }
    }
    Ok(resp.upstream_keep_alive && !trailing)
}

/// Takes body bytes from `input` into `out`: as they are, or only their
/// payload when de-chunking. Returns how many input bytes were body.
fn take_into(
    body: &mut Body,
    input: &[u8],
    dechunk: bool,
    out: &mut Vec<u8>,
) -> Result<usize, Abort> {
    let n = body
        .take(input, |range| {
            if dechunk {
                out.extend_from_slice(&input[range]);
            }
        })
        .map_err(|_| Abort::AfterHead)?;
    if !dechunk {
        out.extend_from_slice(&input[..n]);
    }
    Ok(n)
}

/// Ends a streamed response: the upstream connection goes back to the pool
/// when it can carry another request, and its buffer back to the worker.
pub(super) fn finish(
    worker: &Worker,
    mut conn: UpstreamConn,
    uid: u64,
    streamed: Result<bool, Abort>,
    client_close: bool,
) -> Result<Next, Abort> {
    worker.buffers.borrow_mut().give_back(&mut conn.buf);
    match streamed {
        Ok(true) => worker.pool.borrow_mut().put(uid, conn, worker.now()),
        Ok(false) => {}
        Err(abort) => {
            sock::shutdown(&conn.stream);
            return Err(abort);
        }
    }
    Ok(if client_close {
        Next::Close
    } else {
        Next::KeepAlive
    })
}
