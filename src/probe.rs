//! Verification probes: one GET to the API with a key in a header, answering the HTTP status.
//! The key goes out in a header marked sensitive and is never logged or returned.

use crate::key::RawKey;
use crate::redact;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// The most of a Prometheus answer read (one sample's JSON is a few hundred bytes); a server that
/// sends more gets "answer too large" instead of the operator's memory.
pub const MAX_GATE_ANSWER_BYTES: usize = 64 * 1024;

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
        let request = http::Request::get(without_userinfo(url))
            .header(header, value)
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad probe request: {e}"))?;
        let response = self.send(request, url, timeout).await?;
        // Only the status matters: the body is never read; dropping it closes the connection,
        // however much the server meant to send.
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
        let url = without_userinfo(url.as_str());
        let request = http::Request::get(url)
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad query request: {e}"))?;
        let response = self.send(request, base, timeout).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_GATE_ANSWER_BYTES).collect();
        let body = tokio::time::timeout(timeout, body)
            .await
            .map_err(|_| "the Prometheus answer did not finish in time".to_string())?
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    format!(
                        "Prometheus answer too large: over {} KiB (the query must return one number)",
                        MAX_GATE_ANSWER_BYTES / 1024
                    )
                } else {
                    format!("reading the Prometheus answer: {e}")
                }
            })?
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

/// The URL without user name and password: HTTP never sent them (no Basic auth is made from a
/// URL), and in the request URI they would reach the HTTP client's own trace logs.
fn without_userinfo(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.into()
        }
        _ => url.to_string(),
    }
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Far above any cap: the server stops here if the client never hangs up.
    const ENDLESS: usize = 256 * 1024 * 1024;

    /// A server answering one request with `200` and a body that does not end (chunks until the
    /// client disconnects, or [`ENDLESS`] bytes); the task yields how many body bytes it wrote.
    async fn endless_server() -> (String, tokio::task::JoinHandle<usize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    return 0;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return 0;
            }
            let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, " ".repeat(16 * 1024));
            let mut written = 0;
            while written < ENDLESS {
                if socket.write_all(chunk.as_bytes()).await.is_err() {
                    break;
                }
                written += 16 * 1024;
            }
            written
        });
        (url, task)
    }

    #[tokio::test]
    async fn an_endless_gate_answer_is_cut_off_as_too_large() {
        let (url, server) = endless_server().await;
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            Prober::new().query_prometheus(&url, "up", Duration::from_secs(20)),
        )
        .await
        .expect("the query returns, not reads forever");
        let error = answer.unwrap_err();
        assert!(error.contains("answer too large"), "{error}");
        let written = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .unwrap()
            .unwrap();
        assert!(
            written < ENDLESS,
            "the operator hung up: {written} bytes sent"
        );
    }

    #[tokio::test]
    async fn a_probe_reads_only_the_status_of_an_endless_answer() {
        let (url, server) = endless_server().await;
        let key = RawKey::new("sk_".to_string() + &"a".repeat(64));
        let status = tokio::time::timeout(
            Duration::from_secs(30),
            Prober::new().status(&url, "X-API-Key", &key, Duration::from_secs(20)),
        )
        .await
        .expect("the probe returns, not reads forever");
        assert_eq!(status, Ok(200));
        let written = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .unwrap()
            .unwrap();
        assert!(
            written < ENDLESS,
            "the operator hung up: {written} bytes sent"
        );
    }
}
