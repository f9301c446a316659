//! A test CA and the certificates the edge tests serve, written as PEM
//! files into a scratch directory: ECDSA P-256 leaves from rcgen, an RSA
//! leaf whose key `openssl` makes (ring signs RSA but cannot generate it).

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub pem: PathBuf,
}

pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Leaf {
    /// A listener on 127.0.0.1:0 serving this certificate, h2 and
    /// HTTP/1.1 by ALPN.
    pub fn listener(&self) -> inferlb_core::config::Listener {
        use inferlb_core::config::{CertificateFiles, Listener, Protocol, Tls};
        Listener {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: Some(Tls {
                certificates: vec![CertificateFiles {
                    cert: self.cert.clone(),
                    key: self.key.clone(),
                }],
                client_ca: None,
                refuse_unknown_server_name: false,
            }),
            alpn: vec![Protocol::H2, Protocol::Http1],
        }
    }
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Self { cert, key, pem }
    }

    /// An ECDSA P-256 leaf for `names`, its chain (leaf, CA) in one file.
    pub fn leaf(&self, dir: &Path, file: &str, names: &[&str]) -> Leaf {
        self.leaf_with(dir, file, names, KeyPair::generate().unwrap())
    }

    /// An RSA 2048 leaf for `names`.
    pub fn rsa_leaf(&self, dir: &Path, file: &str, names: &[&str]) -> Leaf {
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("these tests need the openssl command (apt install openssl)");
        assert!(out.status.success(), "openssl genpkey failed");
        let pem = String::from_utf8(out.stdout).unwrap();
        let key = KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap();
        self.leaf_with(dir, file, names, key)
    }

    fn leaf_with(&self, dir: &Path, file: &str, names: &[&str], key: KeyPair) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let leaf = Leaf {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert, format!("{}{}", cert.pem(), self.cert.pem())).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }
}
