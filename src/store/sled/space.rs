//! The free-space guard. sled cannot be trusted to fail gracefully on a
//! full disk (its I/O thread can hit the error first and then refuse
//! everything, reads included), so writes stop before the disk is full:
//! below the reserve, new operations are refused, while writes that finish
//! or remove work still go through; below a quarter of it, every write is
//! refused. Reads never are.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a reading of the free space is trusted. Writes between two
/// readings are bounded by what the committer writes in that time, far
/// below any sensible reserve.
const FRESH: Duration = Duration::from_millis(100);

/// How full the disk is, as writes see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Room {
    /// Above the reserve.
    Plenty,
    /// Below the reserve: nothing new is accepted.
    Low,
    /// Below a quarter of it: nothing is written.
    None,
}

/// Watches the free space of the data directory's file system.
pub(super) struct Space {
    dir: PathBuf,
    reserve: u64,
    /// The last reading, and when it was taken.
    last: Mutex<Option<(Instant, Room)>>,
}

impl Space {
    pub(super) fn new(dir: PathBuf, reserve: u64) -> Self {
        Self {
            dir,
            reserve,
            last: Mutex::new(None),
        }
    }

    /// Bytes an unprivileged writer may still use.
    fn available(&self) -> std::io::Result<u64> {
        let stats = rustix::fs::statvfs(&self.dir)?;
        Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    /// How much room there is now, read at most every [`FRESH`] unless
    /// `look_again`. A file system that cannot say counts as having room:
    /// the writes themselves then tell.
    pub(super) fn room(&self, look_again: bool) -> Room {
        if self.reserve == 0 {
            return Room::Plenty;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, room)) = *last
            && !look_again
            && at.elapsed() < FRESH
        {
            return room;
        }
        let room = match self.available() {
            Ok(free) if free < self.reserve / 4 => Room::None,
            Ok(free) if free < self.reserve => Room::Low,
            _ => Room::Plenty,
        };
        *last = Some((Instant::now(), room));
        room
    }
}
