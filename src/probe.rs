//! Verification probes: one GET to the API with a key in a header, answering the HTTP status.
//! The key goes out in a header marked sensitive and is never logged or returned.

use crate::key::RawKey;
use crate::redact;
use http_body_util::{BodyExt, Empty};
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
        let response = self.send(request, url, timeout).await?;
        Ok(response.status().as_u16())
    }

    /// Sends `request` to `target` (named in errors), waiting at most `timeout` for the answer.
    async fn send(
        &self,
        request: http::Request<Empty<Bytes>>,
        target: &str,
        timeout: Duration,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let target = redact::url(target);
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => Err(format!(
                "no answer from {target} within {}s",
                timeout.as_secs()
            )),
            Ok(Err(e)) => Err(redact::text(&format!("request to {target} failed: {e}"))),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// One Prometheus instant query (`/api/v1/query`): the value of its only sample (a scalar, or
    /// a vector of at most one series; no series reads 0).
    pub async fn query_prometheus(
        &self,
        base: &str,
        query: &str,
        timeout: Duration,
    ) -> Result<f64, String> {
        let url = url::Url::parse_with_params(
            &format!("{}/api/v1/query", base.trim_end_matches('/')),
            &[("query", query)],
        )
        .map_err(|e| format!("bad Prometheus URL {}: {e}", redact::url(base)))?;
        let request = http::Request::get(url.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad query request: {e}"))?;
        let response = self.send(request, base, timeout).await?;
        let status = response.status();
        let body = tokio::time::timeout(timeout, response.into_body().collect())
            .await
            .map_err(|_| "the Prometheus answer did not finish in time".to_string())?
            .map_err(|e| format!("reading the Prometheus answer: {e}"))?
            .to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("Prometheus answered HTTP {status} with no JSON: {e}"))?;
        if answer["status"] != "success" {
            return Err(redact::text(&format!(
                "Prometheus refused the query: {}",
                answer["error"].as_str().unwrap_or("(no error text)")
            )));
        }
        let data = &answer["data"];
        let sample = match data["resultType"].as_str() {
            Some("scalar") => &data["result"],
            Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
                Some([]) => return Ok(0.0),
                Some([one]) => &one["value"],
                Some(many) => {
                    return Err(format!(
                        "the query returned {} series; aggregate it to one (e.g. sum(...))",
                        many.len()
                    ));
                }
                None => return Err("malformed vector result".into()),
            },
            other => return Err(format!("unsupported result type {other:?}")),
        };
        sample[1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| !v.is_nan())
            .ok_or_else(|| format!("no numeric value in {sample}"))
    }
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}
