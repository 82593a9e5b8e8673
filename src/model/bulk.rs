//! Bulk actions: one operation that cancels, deletes or retries every
//! operation a filter matches, a page at a time.
//!
//! The action's own record carries its [`Tally`]: where the walk has got
//! to and what it counted. Each page's edits and the tally that counts
//! them are one store write (`Write::Bulk`), so an action that stops
//! midway (a crash, a lost lease) resumes from its last page with counts
//! that match what was done: nothing counted twice, nothing skipped.

use super::id::OperationId;

/// What a bulk action does to each operation it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BulkAction {
    /// Cancels the unfinished ones.
    Cancel,
    /// Deletes the done ones.
    Delete,
    /// Puts the failed, cancelled and aborted ones back in the queue.
    Retry,
}

impl BulkAction {
    /// Its number in the stored form.
    pub fn as_u8(self) -> u8 {
        match self {
            BulkAction::Cancel => 1,
            BulkAction::Delete => 2,
            BulkAction::Retry => 3,
        }
    }

    /// The action with stored number `n`.
    pub fn from_u8(n: u8) -> Option<Self> {
        Some(match n {
            1 => BulkAction::Cancel,
            2 => BulkAction::Delete,
            3 => BulkAction::Retry,
            _ => return None,
        })
    }

    /// The verb, for status messages.
    pub fn verb(self) -> &'static str {
        match self {
            BulkAction::Cancel => "cancelled",
            BulkAction::Delete => "deleted",
            BulkAction::Retry => "retried",
        }
    }
}

/// A bulk action's progress through its matching set, stored on its
/// operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// How many operations matched when the action counted them first
    /// (the set is walked from the action's own creation back, so later
    /// operations never join it).
    pub total: u64,
    /// Where the walk has got to: the oldest operation examined. None
    /// before the first page.
    pub cursor: Option<OperationId>,
    /// The walk has reached the oldest operation.
    pub walked: bool,
    /// Operations that matched so far.
    pub matched: u64,
    /// Those the action changed.
    pub changed: u64,
    /// Those it left alone: not in a state the action applies to, or of
    /// a kind that does not allow it.
    pub skipped: u64,
}

impl Tally {
    /// The share of the set walked, in percent; below 100 until the walk
    /// has ended.
    pub fn percent(&self) -> u32 {
        if self.walked {
            return 100;
        }
        let total = self.total.max(self.matched).max(1);
        ((self.matched * 100 / total) as u32).min(99)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_stays_below_100_until_the_walk_ends() {
        let mut t = Tally {
            total: 10,
            matched: 10,
            ..Tally::default()
        };
        assert_eq!(t.percent(), 99);
        t.matched = 5;
        assert_eq!(t.percent(), 50);
        // More matched than were counted (the set grew): never above 99.
        t.matched = 20;
        assert_eq!(t.percent(), 99);
        t.walked = true;
        assert_eq!(t.percent(), 100);
        assert_eq!(Tally::default().percent(), 0);
    }

    #[test]
    fn actions_survive_their_stored_number() {
        for a in [BulkAction::Cancel, BulkAction::Delete, BulkAction::Retry] {
            assert_eq!(BulkAction::from_u8(a.as_u8()), Some(a));
        }
        assert_eq!(BulkAction::from_u8(0), None);
    }
}
