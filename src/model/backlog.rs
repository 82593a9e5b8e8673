//! The backlog: how much of one kind is unfinished, by state, and since
//! when. The store counts it; metrics and the console show it.

use std::time::SystemTime;

/// How much of one kind is unfinished in one state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backlog {
    pub kind: String,
    /// The state's public name: QUEUED, RUNNING or CANCELLING.
    pub state: &'static str,
    pub count: u64,
    /// When the oldest of them was created.
    pub oldest: Option<SystemTime>,
}
