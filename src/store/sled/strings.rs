//! The string table: the long strings records repeat (kinds and type
//! URLs), each stored once under a number (`s` keys) and referred to by it.
//!
//! Only the committer adds strings, inside a batch: a batch's new strings
//! are staged with it and join the table once the batch is applied, so a
//! record never refers to a number that is not stored.

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::codec::Strings;

/// The strings stored so far.
#[derive(Default)]
pub(super) struct StringTable {
    by_text: HashMap<Arc<str>, u32>,
    /// Number n is at index n - 1.
    by_number: Vec<Arc<str>>,
}

impl StringTable {
    /// Adds a string read from the store under `number`.
    pub(super) fn load(&mut self, number: u32, text: &str) {
        let index = number as usize - 1;
        if self.by_number.len() <= index {
            self.by_number.resize(index + 1, Arc::from(""));
        }
        let text: Arc<str> = Arc::from(text);
        self.by_number[index] = Arc::clone(&text);
        self.by_text.insert(text, number);
    }

    /// A view that stages new strings for one batch.
    pub(super) fn stage(&self) -> Staged<'_> {
        Staged {
            table: self,
            added: Vec::new(),
        }
    }

    /// Takes a batch's new strings in, once the batch is applied.
    pub(super) fn extend(&mut self, added: Vec<Arc<str>>) {
        for text in added {
            let number = self.by_number.len() as u32 + 1;
            self.by_number.push(Arc::clone(&text));
            self.by_text.insert(text, number);
        }
    }
}

/// The table plus the strings one batch adds.
pub(super) struct Staged<'a> {
    table: &'a StringTable,
    added: Vec<Arc<str>>,
}

impl Staged<'_> {
    /// The strings this batch adds, with their numbers.
    pub(super) fn added(&self) -> impl Iterator<Item = (u32, &str)> {
        let first = self.table.by_number.len() as u32 + 1;
        (first..).zip(self.added.iter().map(|s| &**s))
    }

    /// The new strings, to hand to [`StringTable::extend`].
    pub(super) fn into_added(self) -> Vec<Arc<str>> {
        self.added
    }
}

impl Strings for Staged<'_> {
    fn intern(&mut self, text: &str) -> u32 {
        if let Some(number) = self.table.by_text.get(text) {
            return *number;
        }
        let base = self.table.by_number.len() as u32;
        if let Some(at) = self.added.iter().position(|s| &**s == text) {
            return base + at as u32 + 1;
        }
        self.added.push(Arc::from(text));
        base + self.added.len() as u32
    }

    fn resolve(&self, number: u32) -> Option<Arc<str>> {
        let index = (number as usize).checked_sub(1)?;
        match self.table.by_number.get(index) {
            Some(text) => Some(Arc::clone(text)),
            None => self
                .added
                .get(index - self.table.by_number.len())
                .map(Arc::clone),
        }
    }
}
