//! Opaque, tamper-evident List page tokens.
//!
//! A token holds where the next page starts and a digest of the filter it
//! was issued for, signed with HMAC-SHA256 under a key kept in the store (so
//! tokens outlive restarts and work on every node sharing the store). A
//! token that was altered, truncated or made up fails the signature check;
//! one replayed with another filter fails the digest check.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::model::{Filter, OperationId};

const VERSION: u8 = 1;
const PAYLOAD_LEN: usize = 1 + 16 + 8;
const MAC_LEN: usize = 16;
/// The longest token this server issues, encoded; anything longer is bad.
pub const MAX_TOKEN_LEN: usize = (PAYLOAD_LEN + MAC_LEN).div_ceil(3) * 4;

/// Why a page token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    /// Not a token this server issued, or altered since.
    #[error("page_token is not valid; pass the next_page_token of a previous response unchanged")]
    Invalid,
    /// A real token, but issued for another filter.
    #[error("page_token was issued for a different filter; keep the filter unchanged while paging")]
    FilterChanged,
}

/// Issues and checks page tokens.
#[derive(Clone)]
pub struct PageTokens {
    key: Vec<u8>,
}

impl PageTokens {
    /// Uses `key` to sign tokens.
    pub fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    fn mac(&self, payload: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    fn filter_digest(filter: &Filter) -> [u8; 8] {
        let digest = Sha256::digest(filter.to_string().as_bytes());
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest[..8]);
        out
    }

    /// A token for the page after `cursor`, under `filter`.
    pub fn issue(&self, cursor: OperationId, filter: &Filter) -> String {
        let mut bytes = Vec::with_capacity(PAYLOAD_LEN + MAC_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(cursor.as_bytes());
        bytes.extend_from_slice(&Self::filter_digest(filter));
        let mac = self.mac(&bytes);
        bytes.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Checks a token and returns the cursor it carries.
    pub fn open(&self, token: &str, filter: &Filter) -> Result<OperationId, PageTokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(PageTokenError::Invalid);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| PageTokenError::Invalid)?;
        if bytes.len() != PAYLOAD_LEN + MAC_LEN || bytes[0] != VERSION {
            return Err(PageTokenError::Invalid);
        }
        let (payload, mac) = bytes.split_at(PAYLOAD_LEN);
        let mut check =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        check.update(payload);
        check
            .verify_truncated_left(mac)
            .map_err(|_| PageTokenError::Invalid)?;
        if payload[17..25] != Self::filter_digest(filter) {
            return Err(PageTokenError::FilterChanged);
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&payload[1..17]);
        Ok(OperationId::from_bytes(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let tokens = PageTokens::new(b"k".to_vec());
        let filter = Filter::parse("done = true").unwrap();
        let id = OperationId::generate();
        let token = tokens.issue(id, &filter);
        assert!(token.len() <= MAX_TOKEN_LEN);
        assert_eq!(tokens.open(&token, &filter), Ok(id));
    }

    #[test]
    fn any_altered_byte_is_caught() {
        let tokens = PageTokens::new(b"k".to_vec());
        let filter = Filter::default();
        let token = tokens.issue(OperationId::generate(), &filter);
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let bad = URL_SAFE_NO_PAD.encode(bad);
            assert_eq!(
                tokens.open(&bad, &filter),
                Err(PageTokenError::Invalid),
                "byte {i}"
            );
        }
        assert_eq!(tokens.open("", &filter), Err(PageTokenError::Invalid));
        assert_eq!(tokens.open("!!!", &filter), Err(PageTokenError::Invalid));
        assert_eq!(
            tokens.open(&token[..token.len() - 2], &filter),
            Err(PageTokenError::Invalid)
        );
    }

    #[test]
    fn another_key_or_filter_is_refused() {
        let filter = Filter::parse("done = true").unwrap();
        let token = PageTokens::new(b"a".to_vec()).issue(OperationId::generate(), &filter);
        assert_eq!(
            PageTokens::new(b"b".to_vec()).open(&token, &filter),
            Err(PageTokenError::Invalid)
        );
        let other = Filter::parse("done = false").unwrap();
        assert_eq!(
            PageTokens::new(b"a".to_vec()).open(&token, &other),
            Err(PageTokenError::FilterChanged)
        );
    }
}
