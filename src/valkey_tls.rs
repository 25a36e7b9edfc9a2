//! TLS to Valkey with a private CA: the PEM material `spec.valkey.tls` names, read from Secrets in
//! the rotation's namespace and checked here, so that a missing Secret or a bad PEM is reported
//! by name before any connection is tried. The redis client's own TLS support
//! (`Client::build_with_tls`) does the rest (see [`crate::keystore::client`]).
//!
//! Certificates and keys never appear in a message, a log line or a `Debug` output: errors name
//! the Secret and its data key only.

use crate::crd::ValkeyTls;
use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::sync::Arc;

/// The PEM bytes handed to the redis client. Part of a key store's [`crate::keystore::Endpoint`],
/// so a changed CA or client certificate gets a new connection.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct TlsMaterial {
    /// CA bundle trusted instead of the public (webpki) roots; `None` keeps the public roots.
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and private key for mutual TLS.
    pub client: Option<ClientIdentity>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientIdentity {
    pub cert_chain: Vec<u8>,
    pub key: Vec<u8>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca", &self.ca.as_ref().map(|_| "<set>"))
            .field("client", &self.client.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl TlsMaterial {
    /// In the redis client's form.
    pub fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.client.as_ref().map(|c| redis::ClientTlsConfig {
                client_cert: c.cert_chain.clone(),
                client_key: c.key.clone(),
            }),
            root_cert: self.ca.clone(),
        }
    }
}

/// Why the TLS material could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A missing Secret or data key, or PEM that does not parse (reason `ValkeyUnavailable`).
    #[error("{0}")]
    ValkeyTls(String),
    /// The API read failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// The Secrets `tls` names.
pub fn secret_names(tls: &ValkeyTls) -> Vec<String> {
    let ca = tls.ca_secret_ref.as_ref().map(|r| r.name.clone());
    let cert = tls.cert_secret_ref.as_ref().map(|r| r.name.clone());
    ca.into_iter().chain(cert).collect()
}

/// Checks the Secrets `tls` names (`get`: the Secret of that name, or None) and takes the PEM
/// material from them.
pub fn read(
    get: impl Fn(&str) -> Option<Arc<Secret>>,
    tls: &ValkeyTls,
) -> Result<TlsMaterial, Error> {
    let found = |name: &str, what: &str| {
        get(name).ok_or_else(|| Error::ValkeyTls(format!("{what} Secret {name} not found")))
    };
    let mut material = TlsMaterial::default();
    if let Some(r) = &tls.ca_secret_ref {
        let secret = found(&r.name, "CA")?;
        let pem = data(&secret, &r.name, &r.key, "CA")?;
        check_ca_bundle(&pem)
            .map_err(|e| Error::ValkeyTls(format!("CA Secret {} key {}: {e}", r.name, r.key)))?;
        material.ca = Some(pem);
    }
    if let Some(r) = &tls.cert_secret_ref {
        let secret = found(&r.name, "client certificate")?;
        let cert_chain = data(&secret, &r.name, &r.cert_key, "client certificate")?;
        let key = data(&secret, &r.name, &r.key_key, "client certificate")?;
        check_cert_chain(&cert_chain).map_err(|e| {
            Error::ValkeyTls(format!(
                "client certificate Secret {} key {}: {e}",
                r.name, r.cert_key
            ))
        })?;
        check_private_key(&key).map_err(|e| {
            Error::ValkeyTls(format!(
                "client certificate Secret {} key {}: {e}",
                r.name, r.key_key
            ))
        })?;
        material.client = Some(ClientIdentity { cert_chain, key });
    }
    Ok(material)
}

fn data(secret: &Secret, name: &str, key: &str, what: &str) -> Result<Vec<u8>, Error> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
        .filter(|v| !v.iter().all(u8::is_ascii_whitespace))
        .ok_or_else(|| Error::ValkeyTls(format!("{what} Secret {name} has no key {key}")))
}

/// What went wrong in a PEM, in words that quote none of it.
fn pem_problem(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => "a PEM section has no END line",
        E::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed",
        E::Base64Decode(_) => "a PEM section is not valid base64",
        E::NoItemsFound => "no PEM section of the expected type",
        E::SectionTooLarge => "a PEM section is too large",
        _ => "the PEM does not parse",
    }
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate bundle ({})", pem_problem(&e)))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

/// Every certificate of the bundle must be usable as a trust anchor (what the client does).
pub fn check_ca_bundle(pem: &[u8]) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certificates(pem)?.into_iter().enumerate() {
        roots.add(cert).map_err(|_| {
            format!(
                "certificate {} of the bundle is not a valid X.509 CA",
                i + 1
            )
        })?;
    }
    Ok(())
}

pub fn check_cert_chain(pem: &[u8]) -> Result<(), String> {
    certificates(pem).map(|_| ())
}

pub fn check_private_key(pem: &[u8]) -> Result<(), String> {
    PrivateKeyDer::from_pem_slice(pem)
        .map(|_| ())
        .map_err(|e| format!("not a PEM private key ({})", pem_problem(&e)))
}

/// A failed TLS handshake, explained: rustls's own words (`invalid peer certificate:
/// UnknownIssuer`) with what to check in the spec in front. Other errors are returned as they are.
pub fn explain(e: redis::RedisError) -> redis::RedisError {
    use rustls::{AlertDescription as A, CertificateError as C};
    let Some((io, tls)) = rustls_error(&e) else {
        return e;
    };
    let hint = match tls {
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            "the Valkey server's TLS certificate does not name the URL's host (or spec.valkey.tls.serverName)"
        }
        rustls::Error::InvalidCertificate(_) => {
            "the Valkey server's TLS certificate did not verify against the trusted CA \
             (spec.valkey.tls.caSecretRef, or the public roots without it)"
        }
        rustls::Error::AlertReceived(A::CertificateRequired) => {
            "the Valkey server asks for a client certificate (spec.valkey.tls.certSecretRef)"
        }
        rustls::Error::AlertReceived(
            A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::AccessDenied,
        ) => "the Valkey server refused the client certificate (spec.valkey.tls.certSecretRef)",
        _ => "the TLS handshake with Valkey failed",
    };
    std::io::Error::new(io.kind(), format!("{hint}: {tls}")).into()
}

/// The rustls error inside the I/O error a connection failed with (the redis client keeps it
/// behind an `Arc`).
fn rustls_error(e: &redis::RedisError) -> Option<(&std::io::Error, &rustls::Error)> {
    use std::error::Error as E;
    let mut cause: Option<&(dyn E + 'static)> = e.source();
    while let Some(err) = cause {
        let io = err.downcast_ref::<std::io::Error>().or_else(|| {
            err.downcast_ref::<std::sync::Arc<dyn E + Send + Sync>>()
                .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        });
        if let Some(tls) = io
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return io.map(|io| (io, tls));
        }
        cause = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOT_PEM: &[u8] =
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n";

    #[test]
    fn bad_pem_is_described_without_quoting_it() {
        let e = check_ca_bundle(NOT_PEM).unwrap_err();
        assert!(!e.contains("not base64 at all"), "{e}");
        assert!(e.contains("not a PEM certificate bundle"), "{e}");
        let e = check_ca_bundle(b"just some text").unwrap_err();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        // Valid base64, not a certificate.
        let e =
            check_ca_bundle(b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n")
                .unwrap_err();
        assert!(e.contains("not a valid X.509 CA"), "{e}");
        let e = check_private_key(b"secret-material").unwrap_err();
        assert!(!e.contains("secret-material"), "{e}");
        assert!(e.contains("not a PEM private key"), "{e}");
    }

    #[test]
    fn debug_shows_no_material() {
        let m = TlsMaterial {
            ca: Some(b"CA-PEM-BYTES".to_vec()),
            client: Some(ClientIdentity {
                cert_chain: b"CERT-BYTES".to_vec(),
                key: b"KEY-BYTES".to_vec(),
            }),
        };
        let shown = format!("{m:?}");
        for secret in ["CA-PEM", "67, 65", "CERT", "KEY-BYTES"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
