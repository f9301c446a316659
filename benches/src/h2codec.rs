//! The `h2` crate alone: an h2c server on monoio (the crate and the
//! runtime inferlb uses, through the same compatibility layer) that
//! answers every stream itself, as a proxy's health route would. The `h2`
//! scenario measures it beside the proxies answering the same route, to
//! show what the codec costs before any proxying.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use monoio::io::IntoPollIo;

/// What every stream is answered with (inferlb's health route's body).
pub const BODY: &str = r#"{"status":"ok"}"#;

/// Serves h2c with prior knowledge on `addr` until killed.
pub fn serve(addr: SocketAddr) -> Result<()> {
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .context("cannot build the runtime")?;
    runtime.block_on(async move {
        let listener = monoio::net::TcpListener::bind(addr)?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let Ok(stream) = stream.into_poll_io() else {
                continue;
            };
            monoio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = conn.accept().await {
                    monoio::spawn(async move {
                        let response = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/json")
                            .header("content-length", BODY.len())
                            .body(())
                            .expect("a valid response head");
                        if let Ok(mut send) = respond.send_response(response, false) {
                            let _ = send.send_data(Bytes::from_static(BODY.as_bytes()), true);
                        }
                    });
                }
            });
        }
    })
}
