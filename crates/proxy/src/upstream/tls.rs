//! TLS to replicas (`[pools.upstream_tls]`): one rustls client
//! configuration per setting, built on first use (its CA file read once)
//! and shared by the workers; each worker keeps its own map of them, so a
//! connect takes no lock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use inferlb_core::pool::UpstreamTls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;

type Built = Result<Arc<ClientConfig>, String>;

static SHARED: LazyLock<Mutex<HashMap<UpstreamTls, Built>>> = LazyLock::new(Mutex::default);

thread_local! {
    static LOCAL: RefCell<HashMap<UpstreamTls, Built>> = RefCell::default();
}

/// The client configuration for `settings`, or why it cannot be built.
fn client_config(settings: &UpstreamTls) -> Built {
    if let Some(found) = LOCAL.with(|l| l.borrow().get(settings).cloned()) {
        return found;
    }
    let built = SHARED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(settings.clone())
        .or_insert_with(|| {
            let built = build(settings);
            if let Err(error) = &built {
                tracing::error!(%error, "TLS to a pool's replicas cannot be set up: its requests find no replica");
            }
            built
        })
        .clone();
    LOCAL.with(|l| l.borrow_mut().insert(settings.clone(), built.clone()));
    built
}

/// How to reach a replica of a pool with `[pools.upstream_tls]`; `None`
/// (the request finds no replica) when the pool's CA cannot be read or the
/// replica has no name to verify, said once per setting in the log.
pub(crate) fn target(settings: &UpstreamTls, address: &str) -> Option<super::TlsTarget> {
    let config = match client_config(settings) {
        Ok(config) => config,
        Err(error) => {
            tracing::debug!(%error, "no TLS to the replicas");
            return None;
        }
    };
    let Some(name) = server_name(settings, address) else {
        tracing::debug!(
            address,
            "no name to verify the replica's certificate for: set upstream_tls.server_name"
        );
        return None;
    };
    Some(super::TlsTarget { config, name })
}

/// The name a replica's certificate is verified for: `server_name`, else
/// the host of the replica's address as written (a name or an IP).
fn server_name(settings: &UpstreamTls, address: &str) -> Option<ServerName<'static>> {
    let host = match &settings.server_name {
        Some(name) => name.as_str(),
        None => address
            .rsplit_once(':')
            .map_or(address, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']'),
    };
    ServerName::try_from(host.to_owned()).ok()
}

/// Builds the configuration for `settings` (its CA file read now), without
/// keeping it.
pub(crate) fn build(settings: &UpstreamTls) -> Built {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let mut config = if !settings.verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &settings.ca {
            Some(path) => {
                let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .collect();
                let certs = certs.map_err(|e| format!("{}: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!(
                        "{}: no certificate (a PEM \"CERTIFICATE\" block)",
                        path.display()
                    ));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        format!("{}: not a usable CA certificate: {e}", path.display())
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err("no system CA certificates found: give upstream_tls.ca".into());
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `verify = false`: any certificate is accepted (signatures are still
/// checked, so the handshake itself is sound).
#[derive(Debug)]
pub(crate) struct AcceptAny(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
