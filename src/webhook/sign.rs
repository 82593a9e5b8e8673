//! Standard Webhooks signatures: `v1,` and the base64 HMAC-SHA256 of
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the secret's bytes.
//! During a rotation there are several secrets and one signature per secret,
//! separated by spaces.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// How far a delivery's timestamp may be from the receiver's clock.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// A signing secret, written `whsec_` followed by base64 key bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A fresh random 32-byte secret.
    pub fn generate() -> Self {
        Self(rand::random::<[u8; 32]>().to_vec())
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    /// A secret of its own for `purpose`, derived from this one (the
    /// HMAC-SHA256 of `purpose` under this key): whoever holds it cannot
    /// work back to this one, nor to another purpose's.
    pub fn derive(&self, purpose: &[u8]) -> Secret {
        let mut mac = self.mac();
        mac.update(purpose);
        Secret(mac.finalize().into_bytes().to_vec())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", STANDARD.encode(&self.0))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material by accident.
        f.write_str("Secret(..)")
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let encoded = text.trim().strip_prefix(PREFIX).unwrap_or(text.trim());
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| "a webhook secret is whsec_ followed by base64".to_owned())?;
        if bytes.len() < 16 {
            return Err("a webhook secret needs at least 16 bytes of key".to_owned());
        }
        Ok(Self(bytes))
    }
}

/// Unix seconds.
pub fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    [format!("{id}.{timestamp}.").as_bytes(), body].concat()
}

/// The webhook-signature header for a delivery: one `v1,` signature per
/// secret, separated by spaces.
pub fn sign(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    let content = signed_content(id, timestamp, body);
    secrets
        .iter()
        .map(|secret| {
            let mut mac = secret.mac();
            mac.update(&content);
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a delivery failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is too far from now (replay or clock skew)")]
    Stale,
    #[error("no signature matches: the body, id or timestamp was altered, or the secret is wrong")]
    NoMatch,
}

/// Checks a delivery as a receiver would: the timestamp is within
/// `tolerance` of `now`, and some `v1` signature in the header matches some
/// secret. Comparison is constant-time.
pub fn verify(
    secrets: &[Secret],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if (unix_seconds(now) - ts).unsigned_abs() > tolerance.as_secs() {
        return Err(VerifyError::Stale);
    }
    let content = signed_content(id, ts, body);
    for candidate in signatures.split_whitespace() {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(signature) = STANDARD.decode(encoded) else {
            continue;
        };
        for secret in secrets {
            let mut mac = secret.mac();
            mac.update(&content);
            if mac.verify_slice(&signature).is_ok() {
                return Ok(());
            }
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let old = Secret::generate();
        let new = Secret::generate();
        let now = SystemTime::now();
        let ts = unix_seconds(now);
        let header = sign(&[new.clone(), old.clone()], "msg_1", ts, b"{\"a\":1}");
        assert_eq!(header.split(' ').count(), 2);
        let t = ts.to_string();
        assert_eq!(
            verify(
                std::slice::from_ref(&old),
                "msg_1",
                &t,
                &header,
                b"{\"a\":1}",
                now,
                DEFAULT_TOLERANCE
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                std::slice::from_ref(&new),
                "msg_1",
                &t,
                &header,
                b"{\"a\":1}",
                now,
                DEFAULT_TOLERANCE
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                std::slice::from_ref(&new),
                "msg_1",
                &t,
                &header,
                b"{\"a\":2}",
                now,
                DEFAULT_TOLERANCE
            ),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(
                std::slice::from_ref(&new),
                "msg_2",
                &t,
                &header,
                b"{\"a\":1}",
                now,
                DEFAULT_TOLERANCE
            ),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(
                &[Secret::generate()],
                "msg_1",
                &t,
                &header,
                b"{\"a\":1}",
                now,
                DEFAULT_TOLERANCE
            ),
            Err(VerifyError::NoMatch)
        );
        let late = now + Duration::from_secs(3600);
        assert_eq!(
            verify(
                &[new],
                "msg_1",
                &t,
                &header,
                b"{\"a\":1}",
                late,
                DEFAULT_TOLERANCE
            ),
            Err(VerifyError::Stale)
        );
    }

    #[test]
    fn secrets_round_trip_through_text() {
        let s = Secret::generate();
        let text = s.to_string();
        assert!(text.starts_with("whsec_"));
        assert_eq!(text.parse::<Secret>().unwrap(), s);
        assert!("whsec_!!".parse::<Secret>().is_err());
        assert!("whsec_AAAA".parse::<Secret>().is_err());
    }
}
