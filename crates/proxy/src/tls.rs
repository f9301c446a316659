//! TLS termination: a listener's rustls configuration built from its PEM
//! files, the certificate picked by the client's SNI, session resumption
//! (tickets from a rotating key, and a session cache, both shared by the
//! workers and kept across reloads), and SIGHUP's reload, which swaps in
//! new certificates for new handshakes and keeps the old ones when the new
//! files are bad.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use inferlb_core::config::{Listener, Tls};
use inferlb_core::HandshakeError;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache,
    StoresServerSessions, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Sessions the cache keeps for stateful resumption (TLS 1.2 session ids,
/// and TLS 1.3 clients that do not take tickets).
const SESSION_CACHE: usize = 4096;

/// One TLS listener's live configuration, shared by every worker.
pub(crate) struct Terminator {
    parts: Parts,
    current: ArcSwap<ServerConfig>,
}

/// What a configuration is built from: the settings, and what outlives
/// a reload (the ticket key and the session cache).
struct Parts {
    /// `listeners[N]`, for messages.
    name: String,
    settings: Tls,
    alpn: Vec<Vec<u8>>,
    provider: Arc<CryptoProvider>,
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
}

impl fmt::Debug for Terminator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Terminator")
            .field("name", &self.parts.name)
            .finish_non_exhaustive()
    }
}

impl Terminator {
    /// Reads `listener`'s certificates; `Ok(None)` for a plaintext listener.
    /// The error names the file and what is wrong with it.
    pub(crate) fn new(index: usize, listener: &Listener) -> Result<Option<Arc<Self>>, String> {
        let Some(settings) = &listener.tls else {
            return Ok(None);
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let name = format!("listeners[{index}] ({})", listener.address);
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("{name}: cannot make a session ticket key: {e}"))?;
        let cache: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(SESSION_CACHE);
        let alpn = listener.alpn.iter().map(|p| p.alpn_id().to_vec()).collect();
        let parts = Parts {
            name,
            settings: settings.clone(),
            alpn,
            provider,
            ticketer,
            cache,
        };
        let current = ArcSwap::from_pointee(parts.build()?);
        Ok(Some(Arc::new(Self { parts, current })))
    }

    /// `listeners[N] (address)`.
    pub(crate) fn name(&self) -> &str {
        &self.parts.name
    }

    /// The configuration new handshakes use.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reads the files again; on success new handshakes use them, on error
    /// nothing changes and the error says which file and why.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let config = self.parts.build()?;
        self.current.store(Arc::new(config));
        Ok(())
    }
}

impl Parts {
    fn build(&self) -> Result<ServerConfig, String> {
        let name = &self.name;
        // TLS 1.3 and 1.2 only, rustls' default suites.
        let builder = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("{name}: {e}"))?;
        let builder = match &self.settings.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certificates(path)? {
                    roots.add(cert).map_err(|e| {
                        format!("{}: not a usable CA certificate: {e}", path.display())
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&self.provider),
                )
                .build()
                .map_err(|e| format!("{}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut certificates = Vec::with_capacity(self.settings.certificates.len());
        for files in &self.settings.certificates {
            certificates.push(self.certified_key(&files.cert, &files.key)?);
        }
        let resolver = ByName {
            certificates,
            refuse_unknown: self.settings.refuse_unknown_server_name,
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = self.alpn.clone();
        config.ticketer = Arc::clone(&self.ticketer);
        config.session_storage = Arc::clone(&self.cache);
        Ok(config)
    }

    /// A certificate chain with its key, checked to belong together.
    fn certified_key(&self, cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
        let chain = read_certificates(cert)?;
        let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| {
            format!(
                "{}: the first certificate cannot be read: {e}",
                cert.display()
            )
        })?;
        drop(leaf);
        let der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => format!(
                "{}: no private key (a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)",
                key.display()
            ),
            rustls_pki_types::pem::Error::Io(e) => format!("{}: {e}", key.display()),
            other => format!("{}: {other}", key.display()),
        })?;
        let signing = self
            .provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|_| {
            format!(
                "{}: the key does not belong to the certificate in {}",
                key.display(),
                cert.display()
            )
        })?;
        Ok(Arc::new(certified))
    }
}

/// Every certificate of a PEM file, at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect();
    let certs = certs.map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate (a PEM \"CERTIFICATE\" block)",
            path.display()
        ));
    }
    Ok(certs)
}

fn pem_error(path: &Path, e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(e) => format!("{}: {e}", path.display()),
        other => format!("{}: not PEM: {other}", path.display()),
    }
}

/// Picks the certificate whose names cover the client's SNI; the first for
/// a client that sends none, and for an unknown name unless refused.
#[derive(Debug, Default)]
struct ByName {
    certificates: Vec<Arc<CertifiedKey>>,
    refuse_unknown: bool,
}

/// The message rustls gives when the resolver finds no certificate, which
/// [`classify`] turns into [`HandshakeError::UnknownServerName`].
const NO_CERTIFICATE: &str = "no server certificate chain resolved";

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(asked) = hello.server_name() else {
            return self.certificates.first().cloned();
        };
        let found = ServerName::try_from(asked).ok().and_then(|name| {
            self.certificates.iter().find(|c| {
                c.end_entity_cert().is_ok_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|leaf| leaf.verify_is_valid_for_subject_name(&name).is_ok())
                })
            })
        });
        match found {
            Some(certified) => Some(Arc::clone(certified)),
            None if self.refuse_unknown => None,
            None => self.certificates.first().cloned(),
        }
    }
}

/// What kind of failure a failed handshake was.
pub(crate) fn classify(error: &std::io::Error) -> HandshakeError {
    use std::io::ErrorKind as Kind;
    if let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        return match tls {
            rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_) => {
                HandshakeError::ClientCertificate
            }
            rustls::Error::NoApplicationProtocol => HandshakeError::NoApplicationProtocol,
            rustls::Error::General(message) if message == NO_CERTIFICATE => {
                HandshakeError::UnknownServerName
            }
            _ => HandshakeError::Protocol,
        };
    }
    match error.kind() {
        Kind::UnexpectedEof
        | Kind::ConnectionReset
        | Kind::BrokenPipe
        | Kind::ConnectionAborted => HandshakeError::Closed,
        _ => HandshakeError::Protocol,
    }
}

/// The version and suite a finished handshake agreed, for the access log.
pub(crate) fn describe(conn: &rustls::ServerConnection) -> (&'static str, &'static str) {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "",
    };
    let suite = conn
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("");
    (version, suite)
}
