//! The SSRF guard: callback URLs may not point into the server's own
//! network unless the operator allows it. The check runs when the
//! operation is created and again on every connection, on the address
//! actually dialled, so a DNS answer that changes in between (rebinding)
//! is caught.

use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::engine::CallbackGuard;

/// True for addresses a webhook must not reach by default: loopback,
/// private, link-local, multicast, unspecified, and similar.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || o[0] == 0
                // Carrier-grade NAT, 100.64.0.0/10.
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // Unique local fc00::/7 and link-local fe80::/10.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Checks a callback URL: http or https, with a host whose addresses are all
/// allowed. Returns why it was refused.
pub async fn check_url(text: &str, allow_private: bool) -> Result<Url, String> {
    if text.len() > 2048 {
        return Err("callback_url is longer than 2048 bytes".into());
    }
    let url = Url::parse(text).map_err(|e| format!("callback_url is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "callback_url must use http or https, not {}",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("callback_url must not carry credentials".into());
    }
    let Some(host) = url.host_str() else {
        return Err("callback_url has no host".into());
    };
    if allow_private {
        return Ok(url);
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("callback_url's host {host} does not resolve: {e}"))?
            .collect(),
    };
    if let Some(bad) = addresses.iter().find(|a| is_forbidden(a.ip())) {
        return Err(format!(
            "callback_url resolves to {}, a loopback, private, link-local or multicast address; \
             the server refuses these unless started with --webhook-allow-private",
            bad.ip()
        ));
    }
    if addresses.is_empty() {
        return Err(format!("callback_url's host {host} has no addresses"));
    }
    Ok(url)
}

/// The guard as the engine asks it, at create time.
#[derive(Clone, Copy, Debug)]
pub struct CreateTimeGuard {
    /// Whether loopback and private addresses are allowed.
    pub allow_private: bool,
}

#[async_trait]
impl CallbackGuard for CreateTimeGuard {
    async fn check(&self, url: &str) -> Result<(), String> {
        check_url(url, self.allow_private).await.map(|_| ())
    }
}

/// A resolver for the HTTP client that drops forbidden addresses, so the
/// address dialled is always one that passed the guard.
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_forbidden(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(
                    format!("{host} resolves only to addresses webhooks may not reach").into(),
                );
            }
            Ok(Box::new(found.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_for_scheme_and_address() {
        assert!(check_url("ftp://example.com/x", true).await.is_err());
        assert!(check_url("not a url", true).await.is_err());
        assert!(
            check_url("http://user:pw@93.184.216.34/", true)
                .await
                .is_err()
        );
        assert!(
            check_url("http://127.0.0.1:8080/hook", false)
                .await
                .is_err()
        );
        assert!(check_url("http://[::1]/hook", false).await.is_err());
        assert!(check_url("http://localhost/hook", false).await.is_err());
        assert!(check_url("http://127.0.0.1:8080/hook", true).await.is_ok());
        assert!(check_url("https://93.184.216.34/hook", false).await.is_ok());
    }
}
