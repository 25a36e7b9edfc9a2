//! How the operator reaches a Valkey server: the endpoint (URL, password, TLS), the client for
//! it, and the errors of talking to it. The key store and the change feed both build on this.

use crate::valkey_tls::TlsMaterial;

#[derive(thiserror::Error)]
pub enum KeyStoreError {
    // The redis crate's messages do not quote the URL today; they are redacted anyway, so a
    // future one that does cannot leak a password.
    #[error("Valkey URL is invalid: {}", crate::redact::text(.0))]
    InvalidUrl(String),
    #[error("Valkey is unavailable: {}", crate::redact::text(&.0.to_string()))]
    Unavailable(#[from] redis::RedisError),
}

/// As its (redacted) message: the wrapped errors' own `Debug` is not redacted.
impl std::fmt::Debug for KeyStoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyStoreError({self})")
    }
}

/// Where a rotation's records live.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub url: String,
    pub password: Option<String>,
    pub insecure_skip_tls_verify: bool,
    /// The CA to trust and the client certificate, from `spec.valkey.tls` (PEM).
    pub tls: Option<TlsMaterial>,
    /// The name the server's certificate carries when it is not the URL's host
    /// (`spec.valkey.tls.serverName`; see [`crate::valkey_link`]).
    pub server_name: Option<String>,
}

/// Only the redacted URL: the password (in the URL or from a Secret) never prints.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &crate::redact::url(&self.url))
            .finish_non_exhaustive()
    }
}

/// Accepts `valkey://` and `valkeys://` as aliases of `redis://` and `rediss://`.
pub fn normalize_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("valkeys://") {
        format!("rediss://{rest}")
    } else if let Some(rest) = url.strip_prefix("valkey://") {
        format!("redis://{rest}")
    } else {
        url.to_string()
    }
}

/// Parses the URL as the client will, so a bad one is reported as a spec error.
pub fn check_url(url: &str) -> Result<(), KeyStoreError> {
    redis::Client::open(normalize_url(url))
        .map(|_| ())
        .map_err(|e| KeyStoreError::InvalidUrl(e.to_string()))
}

/// A client for the endpoint speaking `protocol` (RESP3 is needed for pushed invalidations).
pub fn client(
    endpoint: &Endpoint,
    protocol: redis::ProtocolVersion,
) -> Result<redis::Client, KeyStoreError> {
    let mut url = normalize_url(&endpoint.url);
    if endpoint.insecure_skip_tls_verify && url.starts_with("rediss://") && !url.contains('#') {
        url.push_str("#insecure");
    }
    let client =
        redis::Client::open(url.as_str()).map_err(|e| KeyStoreError::InvalidUrl(e.to_string()))?;
    let info = client.get_connection_info().clone();
    let mut settings = info.redis_settings().clone().set_protocol(protocol);
    if let Some(password) = &endpoint.password {
        settings = settings.set_password(password);
    }
    let mut info = info.set_redis_settings(settings);
    if let (Some(name), redis::ConnectionAddr::TcpTls { port, insecure, .. }) =
        (&endpoint.server_name, info.addr().clone())
    {
        // The certificate is checked against (and SNI names) the server name; `connect_to`
        // resolves that name to the URL's host.
        let addr = redis::ConnectionAddr::TcpTls {
            host: name.clone(),
            port,
            insecure,
            tls_params: None,
        };
        info = info.set_addr(addr);
    }
    match &endpoint.tls {
        None => redis::Client::open(info).map_err(|e| KeyStoreError::InvalidUrl(e.to_string())),
        // The CA replaces the public roots; the client certificate is presented when asked for.
        // The PEM was checked when it was read (crate::valkey_tls), so a failure here is the URL.
        Some(tls) => redis::Client::build_with_tls(info, tls.certificates())
            .map_err(|e| KeyStoreError::InvalidUrl(e.to_string())),
    }
}

/// With a server name set for a TLS URL: the resolver that sends its connections to the URL's
/// host (None otherwise: the URL's host is also the certificate's name).
pub fn connect_to(endpoint: &Endpoint) -> Option<crate::valkey_link::ConnectTo> {
    endpoint.server_name.as_ref()?;
    let info = redis::Client::open(normalize_url(&endpoint.url)).ok()?;
    match info.get_connection_info().addr() {
        redis::ConnectionAddr::TcpTls { host, .. } => {
            Some(crate::valkey_link::ConnectTo { host: host.clone() })
        }
        _ => None,
    }
}
