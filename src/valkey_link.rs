//! Reaching a Valkey whose TLS certificate names another host than the URL
//! (`spec.valkey.tls.serverName`). redis's `ConnectionManager` connects to the URL's host, checks
//! the certificate against that same name and takes no DNS resolver; so such a server is named by
//! its `serverName` (for the certificate check and SNI), and that name resolves to the URL's real
//! host, as `curl --connect-to` does. The connection is redis's multiplexed one: when it is lost,
//! the reconciler drops the key store and the next attempt connects afresh (as for any
//! unavailable Valkey).

use redis::RedisFuture;
use redis::aio::MultiplexedConnection;
use std::net::SocketAddr;
use std::time::Duration;

/// Resolves any name to the URL's own host (its addresses, by the system resolver).
pub struct ConnectTo {
    pub host: String,
}

impl redis::io::AsyncDNSResolver for ConnectTo {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        _server_name: &'b str,
        port: u16,
    ) -> RedisFuture<'a, Box<dyn Iterator<Item = SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((self.host.as_str(), port)).await?;
            Ok(Box::new(addrs) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

/// A connection to `client`'s server (named by its server name) at the resolver's host.
pub async fn connect(
    client: &redis::Client,
    resolver: ConnectTo,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(3)))
        .set_dns_resolver(resolver);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
