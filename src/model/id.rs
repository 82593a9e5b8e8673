//! Identifiers that carry meaning: operation ids and idempotency keys.
//!
//! Both are UUIDs. Operation ids are version 7, so their byte order is their
//! creation order, which is what lets the store list newest-first with a
//! plain range scan.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// The collection prefix of every operation name.
pub const OPERATIONS_COLLECTION: &str = "operations";

/// Version 7 UUIDs in the order they are made.
struct Sequence {
    context: uuid::ContextV7,
    /// The latest time given so far.
    last: std::time::Duration,
}

impl Sequence {
    const fn new() -> Self {
        Self {
            context: uuid::ContextV7::new(),
            last: std::time::Duration::ZERO,
        }
    }

    /// The next UUID, carrying `since` (from the epoch), or the latest time
    /// given before it when `since` is earlier. The context alone keeps
    /// ids in order within one millisecond, but a clock that steps back
    /// across a second boundary gave it the earlier second's fraction on
    /// the later second: one id about a second ahead, and the ids after
    /// it behind it again.
    fn next(&mut self, since: std::time::Duration) -> Uuid {
        self.last = self.last.max(since);
        let timestamp = uuid::Timestamp::from_unix(
            &self.context,
            self.last.as_secs(),
            self.last.subsec_nanos(),
        );
        Uuid::new_v7(timestamp)
    }
}

/// The id of one operation; its resource name is `operations/{id}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperationId(Uuid);

impl OperationId {
    /// A fresh id that sorts after every id made before it in this process.
    pub fn generate() -> Self {
        Self::at(std::time::SystemTime::now())
    }

    /// A fresh id that carries `time` (to the millisecond), so that the
    /// time an id tells is its operation's creation time, and that still
    /// sorts after every id made before it in this process (a time earlier
    /// than the last one given takes the last one's).
    pub fn at(time: std::time::SystemTime) -> Self {
        static SEQUENCE: std::sync::Mutex<Sequence> = std::sync::Mutex::new(Sequence::new());
        let since = time
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut sequence = SEQUENCE.lock().unwrap_or_else(|e| e.into_inner());
        Self(sequence.next(since))
    }

    /// Rebuilds an id from the 16 bytes `as_bytes` returned.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// The big-endian bytes; they sort in creation order.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The bare UUID, as a string.
    pub fn uuid(&self) -> String {
        self.0.to_string()
    }

    /// Parses a name of the form `{collection}/{uuid}`, such as
    /// `reports/{uuid}` for resources named after their operation.
    pub fn parse_in(collection: &str, name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        let id = name
            .strip_prefix(collection)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or(NameError::Malformed)?;
        if id.len() != 36 {
            return Err(NameError::Malformed);
        }
        Uuid::parse_str(id)
            .map(Self)
            .map_err(|_| NameError::Malformed)
    }

    /// The resource name, `operations/{id}`.
    pub fn name(&self) -> String {
        format!("{OPERATIONS_COLLECTION}/{}", self.0)
    }

    /// Parses a resource name of the form `operations/{uuid}`.
    /// Only the canonical hyphenated UUID is accepted, so that each
    /// operation has exactly one name.
    pub fn parse_name(name: &str) -> Result<Self, NameError> {
        Self::parse_in(OPERATIONS_COLLECTION, name)
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{OPERATIONS_COLLECTION}/{}", self.0)
    }
}

impl fmt::Debug for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperationId({})", self.0)
    }
}

/// Why an operation name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was left empty.
    #[error("name is required")]
    Empty,
    /// The name is not the collection, a slash and a canonical UUID.
    #[error(
        "name must have the form {{collection}}/{{uuid}}, such as operations/0190b2d4-7d7c-7f7e-8000-000000000000"
    )]
    Malformed,
}

/// A client-chosen idempotency key (AIP-155): repeating a create call with
/// the same key returns the operation the first call made.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RequestId(Uuid);

impl RequestId {
    /// Rebuilds a key from its 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// The 16 bytes of the UUID.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Reads an optional key: an empty string means none was given.
    pub fn parse_optional(value: &str) -> Result<Option<Self>, RequestIdError> {
        if value.is_empty() {
            return Ok(None);
        }
        value.parse().map(Some)
    }
}

impl FromStr for RequestId {
    type Err = RequestIdError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.len() > 36 {
            return Err(RequestIdError);
        }
        Uuid::parse_str(value).map(Self).map_err(|_| RequestIdError)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A request_id that is not a UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request_id must be a UUID, such as 123e4567-e89b-12d3-a456-426614174000")]
pub struct RequestIdError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_creation() {
        let a = OperationId::generate();
        let b = OperationId::generate();
        assert!(a.as_bytes() < b.as_bytes());
        assert_eq!(OperationId::parse_name(&a.name()), Ok(a));
    }

    #[test]
    fn ids_stay_in_order_when_the_clock_steps_back_across_a_second() {
        let at = |millis: u64| std::time::Duration::from_millis(1_700_000_000_000 + millis);
        let mut sequence = Sequence::new();
        let ids = [
            sequence.next(at(1_028)),
            sequence.next(at(997)),
            sequence.next(at(1_030)),
        ];
        assert!(ids[0] < ids[1] && ids[1] < ids[2], "{ids:?}");
        let millis = |id: &Uuid| id.get_timestamp().unwrap().to_unix();
        // The step back takes the latest time, not a second ahead of it.
        assert_eq!(millis(&ids[1]), (1_700_000_001, 28_000_000));
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in [
            "",
            "operations/",
            "operations/xyz",
            "ops/0190b2d4-7d7c-7f7e-8000-000000000000",
            "operations/0190b2d47d7c7f7e8000000000000000",
            "operations/{0190b2d4-7d7c-7f7e-8000-000000000000}",
        ] {
            assert!(OperationId::parse_name(bad).is_err(), "{bad}");
        }
    }
}
