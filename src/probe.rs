//! Verification probes: one GET to the API with a key in a header, answering the HTTP status.
//! The key goes out in a header marked sensitive and is never logged or returned.

use crate::key::RawKey;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

#[derive(Clone)]
pub struct Prober {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Prober {
    pub fn new() -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .unwrap_or_else(|_| {
                // No system roots (a distroless image without CA certificates): plain HTTP and
                // TLS to no one; the probe reports the TLS failure.
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                    rustls::ClientConfig::builder_with_provider(
                        rustls::crypto::ring::default_provider().into(),
                    )
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                )
            })
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            client: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    /// The HTTP status the API answers to `GET url` with `key` in `header`, or why no answer came.
    pub async fn status(
        &self,
        url: &str,
        header: &str,
        key: &RawKey,
        timeout: Duration,
    ) -> Result<u16, String> {
        let mut value = http::HeaderValue::from_str(key.expose())
            .map_err(|_| "the key is not a valid header value".to_string())?;
        value.set_sensitive(true);
        let request = http::Request::get(url)
            .header(header, value)
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad probe request: {e}"))?;
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => Err(format!(
                "no answer from {url} within {}s",
                timeout.as_secs()
            )),
            Ok(Err(e)) => Err(format!("request to {url} failed: {e}")),
            Ok(Ok(response)) => Ok(response.status().as_u16()),
        }
    }
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}
