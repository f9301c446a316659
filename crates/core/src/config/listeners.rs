//! The edge's sections: each `[[listeners]]` entry (its address, TLS and
//! the protocols it offers) and `[http2]`, validated into the form the
//! data plane runs with. The certificate files themselves are read by the
//! data plane (at start, on SIGHUP, and by `inferlb check`).

use std::net::SocketAddr;

use super::file::{FileHttp2, FileListener};
use super::proxy::Limits;
use super::{count, Problems};

/// One address the data plane serves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub address: SocketAddr,
    /// TLS termination; `None`: plaintext.
    pub tls: Option<Tls>,
    /// Protocols offered (ALPN over TLS), most preferred first: `h2` and
    /// `http/1.1`. On a plaintext listener, `h2` allows h2c with prior
    /// knowledge.
    pub alpn: Vec<Protocol>,
}

impl Listener {
    /// A plaintext listener speaking HTTP/1.1 and h2c (`--listen`).
    pub fn plain(address: SocketAddr) -> Self {
        Self {
            address,
            tls: None,
            alpn: vec![Protocol::H2, Protocol::Http1],
        }
    }

    /// Whether clients may speak HTTP/2 here.
    pub fn allows_h2(&self) -> bool {
        self.alpn.contains(&Protocol::H2)
    }
}

/// A protocol a listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    H2,
    Http1,
}

impl Protocol {
    /// Its ALPN identifier.
    pub fn alpn_id(self) -> &'static [u8] {
        match self {
            Self::H2 => b"h2",
            Self::Http1 => b"http/1.1",
        }
    }
}

/// A listener's TLS settings: files, read (and re-read on SIGHUP) by the
/// data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Certificate chains and keys; the first serves unknown names.
    pub certificates: Vec<CertificateFiles>,
    /// Client certificates are required and verified against these CAs.
    pub client_ca: Option<std::path::PathBuf>,
    /// A handshake naming a server no certificate covers is refused
    /// instead of getting the first certificate.
    pub refuse_unknown_server_name: bool,
}

/// A certificate chain's file and its key's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Validated `[http2]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2 {
    /// See [`FileHttp2::max_concurrent_streams`].
    pub max_concurrent_streams: u32,
    /// See [`FileHttp2::max_header_list_size`].
    pub max_header_list_size: u32,
    /// See [`FileHttp2::max_resets_per_s`].
    pub max_resets_per_s: u32,
    /// See [`FileHttp2::max_control_frames_per_s`].
    pub max_control_frames_per_s: u32,
    /// See [`FileHttp2::stream_window_bytes`].
    pub stream_window_bytes: u32,
    /// See [`FileHttp2::connection_window_bytes`].
    pub connection_window_bytes: u32,
}

impl Default for Http2 {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 128,
            max_header_list_size: 16 * 1024,
            max_resets_per_s: 100,
            max_control_frames_per_s: 1000,
            stream_window_bytes: 256 * 1024,
            connection_window_bytes: 1024 * 1024,
        }
    }
}

/// One `[[listeners]]` entry's TLS and ALPN settings.
pub(super) fn listener(
    p: &mut Problems,
    i: usize,
    address: SocketAddr,
    file: &FileListener,
) -> Listener {
    let at = |field: &str| format!("listeners[{i}].{field}");
    let mut alpn = Vec::new();
    match &file.alpn {
        None => alpn = vec![Protocol::H2, Protocol::Http1],
        Some(list) => {
            for (j, id) in list.iter().enumerate() {
                let protocol = match id.as_str() {
                    "h2" => Protocol::H2,
                    "http/1.1" => Protocol::Http1,
                    other => {
                        p.add(
                            at(&format!("alpn[{j}]")),
                            format!("{other:?} is not a protocol inferlb speaks: \"h2\" or \"http/1.1\""),
                        );
                        continue;
                    }
                };
                if alpn.contains(&protocol) {
                    p.add(at(&format!("alpn[{j}]")), format!("{id:?} is listed twice"));
                } else {
                    alpn.push(protocol);
                }
            }
            if list.is_empty() {
                p.add(
                    at("alpn"),
                    "list at least one protocol: \"h2\", \"http/1.1\"",
                );
            }
        }
    }
    if alpn.is_empty() {
        alpn.push(Protocol::Http1);
    }
    let path = |p: &mut Problems, field: String, text: &str| {
        if text.trim().is_empty() {
            p.add(field, "is empty: give a file's path");
            None
        } else {
            Some(std::path::PathBuf::from(text))
        }
    };
    let tls = file.tls.as_ref().map(|tls| {
        if tls.certificates.is_empty() {
            p.add(
                at("tls.certificates"),
                "list at least one certificate: [{ cert = \"/etc/inferlb/api.pem\", key = \"/etc/inferlb/api.key\" }]",
            );
        }
        let certificates = tls
            .certificates
            .iter()
            .enumerate()
            .filter_map(|(j, c)| {
                let cert = path(p, at(&format!("tls.certificates[{j}].cert")), &c.cert);
                let key = path(p, at(&format!("tls.certificates[{j}].key")), &c.key);
                Some(CertificateFiles {
                    cert: cert?,
                    key: key?,
                })
            })
            .collect();
        if tls.client_ca.is_some() && file.client_ca.is_some() {
            p.add(at("client_ca"), "give client_ca once: here or inside tls");
        }
        let client_ca = match tls.client_ca.as_deref().or(file.client_ca.as_deref()) {
            Some(text) => path(p, at("client_ca"), text),
            None => None,
        };
        let refuse_unknown_server_name = match tls.unknown_server_name.as_deref() {
            None | Some("first") => false,
            Some("refuse") => true,
            Some(other) => {
                p.add(
                    at("tls.unknown_server_name"),
                    format!("{other:?} is not \"first\" or \"refuse\""),
                );
                false
            }
        };
        Tls {
            certificates,
            client_ca,
            refuse_unknown_server_name,
        }
    });
    if tls.is_none() && file.client_ca.is_some() {
        p.add(
            at("client_ca"),
            "client certificates need TLS: add a tls table with the server's certificates",
        );
    }
    Listener { address, tls, alpn }
}

/// `[http2]`, each count within what RFC 9113 and sense allow.
pub(super) fn http2(p: &mut Problems, file: &FileHttp2, limits: &Limits) -> Http2 {
    let d = Http2::default();
    let mut n = |field: &str, value: Option<u32>, default: u32, min: u32, max: u32| {
        count(
            p,
            &format!("http2.{field}"),
            value.map(|v| v as usize),
            default as usize,
            min as usize,
            max as usize,
        ) as u32
    };
    let head = u32::try_from(limits.max_request_head_bytes).unwrap_or(u32::MAX);
    Http2 {
        max_concurrent_streams: n(
            "max_concurrent_streams",
            file.max_concurrent_streams,
            d.max_concurrent_streams,
            1,
            65_535,
        ),
        max_header_list_size: n(
            "max_header_list_size",
            file.max_header_list_size,
            head,
            1024,
            1 << 24,
        ),
        max_resets_per_s: n(
            "max_resets_per_s",
            file.max_resets_per_s,
            d.max_resets_per_s,
            1,
            1 << 20,
        ),
        max_control_frames_per_s: n(
            "max_control_frames_per_s",
            file.max_control_frames_per_s,
            d.max_control_frames_per_s,
            1,
            1 << 20,
        ),
        // RFC 9113 §6.5.2: at least the initial 65 535, at most 2^31-1.
        stream_window_bytes: n(
            "stream_window_bytes",
            file.stream_window_bytes,
            d.stream_window_bytes,
            65_535,
            (1 << 31) - 1,
        ),
        connection_window_bytes: n(
            "connection_window_bytes",
            file.connection_window_bytes,
            d.connection_window_bytes,
            65_535,
            (1 << 31) - 1,
        ),
    }
}
