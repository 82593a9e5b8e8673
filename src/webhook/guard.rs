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
/// private, link-local, multicast, unspecified, reserved and documentation
/// ranges, and IPv6 addresses that carry (or lead to) an IPv4 one, judged
/// by the IPv4 address they carry.
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
                // Protocol assignments 192.0.0.0/24, and the documentation
                // ranges 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24.
                || (o[0] == 192 && o[1] == 0 && (o[2] == 0 || o[2] == 2))
                || (o[0] == 198 && o[1] == 51 && o[2] == 100)
                || (o[0] == 203 && o[1] == 0 && o[2] == 113)
                // Benchmarking, 198.18.0.0/15.
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                // Reserved, 240.0.0.0/4.
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let carried = |high: u16, low: u16| {
                let [a, b] = high.to_be_bytes();
                let [c, d] = low.to_be_bytes();
                IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
            };
            // IPv4-mapped ::ffff:a.b.c.d and IPv4-compatible ::a.b.c.d.
            if s[..5] == [0; 5]
                && (s[5] == 0xffff || s[5] == 0)
                && !v6.is_loopback()
                && !v6.is_unspecified()
            {
                return is_forbidden(carried(s[6], s[7]));
            }
            // NAT64, 64:ff9b::/96: the IPv4 address in its last 32 bits.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_forbidden(carried(s[6], s[7]));
            }
            // 6to4, 2002::/16: the IPv4 address in bits 16 to 48.
            if s[0] == 0x2002 {
                return is_forbidden(carried(s[1], s[2]));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // Unique local fc00::/7, link-local fe80::/10 and the old
                // site-local fec0::/10.
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                // Local-use NAT64 64:ff9b:1::/48, whose IPv4 part is the
                // network's own business.
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                // Teredo 2001::/32 (an obscured IPv4 address) and the
                // documentation range 2001:db8::/32.
                || (s[0] == 0x2001 && (s[1] == 0 || s[1] == 0xdb8))
                // Discard-only, 100::/64.
                || (s[0] == 0x100 && s[1..4] == [0, 0, 0])
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
    if addresses.iter().any(|a| is_forbidden(a.ip())) {
        // Which address it was is not said: the answer would map the
        // server's own network for whoever asks.
        return Err(
            "callback_url leads to a loopback, private, link-local, reserved or otherwise special \
             address; the server refuses these unless started with --webhook-allow-private"
                .into(),
        );
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
        // Ranges that carry an IPv4 address are judged by it; reserved and
        // documentation ranges are refused.
        for ip in [
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "2002:7f00:1::1",
            "2002:c0a8:101::",
            "::127.0.0.1",
            "::10.0.0.1",
            "fec0::1",
            "64:ff9b:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:db8::1",
            "100::1",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.254",
            "192.0.2.7",
            "203.0.113.9",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "198.20.0.1",
        ] {
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
