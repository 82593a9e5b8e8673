//! Requests and responses as operations carry them: an encoded protobuf
//! message with its type URL, the engine's own `google.protobuf.Any`.

use bytes::Bytes;

/// An encoded protobuf message with its type URL: the engine's own
/// `google.protobuf.Any`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Payload {
    /// `type.googleapis.com/<full message name>`.
    pub type_url: String,
    /// The encoded message.
    pub value: Bytes,
}

/// The canonical Any type URL of a message: `type.googleapis.com/` and its
/// full name, whatever domain its `prost::Name` impl declares.
pub fn type_url_of<M: prost::Name>() -> String {
    format!("type.googleapis.com/{}", M::full_name())
}

impl Payload {
    /// Encodes a message under its canonical type URL.
    pub fn pack<M: prost::Name>(message: &M) -> Self {
        Self {
            type_url: type_url_of::<M>(),
            value: message.encode_to_vec().into(),
        }
    }

    /// Decodes the message, checking that the type URL names it (in any
    /// domain).
    pub fn unpack<M: prost::Name + Default>(&self) -> Result<M, PayloadError> {
        let expected = type_url_of::<M>();
        let named = self.type_url.rsplit_once('/').map(|(_, name)| name);
        if named != Some(M::full_name().as_str()) {
            return Err(PayloadError::WrongType {
                expected,
                found: self.type_url.clone(),
            });
        }
        M::decode(self.value.clone()).map_err(|e| PayloadError::Decode(e.to_string()))
    }
}

/// A payload that is not the message a reader expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload has type {found}, expected {expected}")]
    WrongType { expected: String, found: String },
    #[error("payload does not decode: {0}")]
    Decode(String),
}
