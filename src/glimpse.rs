//! Figures the real-time event loop reads from under a lock that a vCPU
//! or device thread may hold, without waiting for it.
//!
//! The loop runs `SCHED_FIFO`; a normal thread it preempted inside a
//! critical section waits its turn among the busy vCPUs, and a loop that
//! blocked on that lock would wait with it (design.md, "Threads"). A
//! [`Glimpse`] only *tries* the lock: when it is free it reads the figures
//! and keeps a copy, when it is held it answers with the copy of the last
//! read (figures at most one statistics period old) and counts the miss.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::bus::{lock, try_lock};

/// The last figures read from under another thread's lock.
#[derive(Debug, Default)]
pub struct Glimpse<T> {
    /// Only readers (the loop) take this lock, never the device's threads.
    last: Mutex<T>,
    busy: AtomicU64,
}

impl<T: Clone> Glimpse<T> {
    pub fn new(first: T) -> Self {
        Glimpse {
            last: Mutex::new(first),
            busy: AtomicU64::new(0),
        }
    }

    /// `read` of what `guarded` holds, if no other thread holds its lock
    /// now; otherwise the figures of the last read.
    pub fn read<L: ?Sized>(&self, guarded: &Mutex<L>, read: impl FnOnce(&L) -> T) -> T {
        let fresh = try_lock(guarded).map(|g| read(&g));
        let mut last = lock(&self.last);
        match fresh {
            Some(v) => {
                *last = v.clone();
                v
            }
            None => {
                self.busy.fetch_add(1, Ordering::Relaxed);
                last.clone()
            }
        }
    }

    /// Figures the caller read itself while it held the lock.
    pub fn set(&self, figures: T) {
        *lock(&self.last) = figures;
    }

    /// How many reads found the lock held and answered with the last figures.
    pub fn busy(&self) -> u64 {
        self.busy.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_free_lock_is_read_and_a_held_one_gives_the_last_figures_at_once() {
        let guarded = Arc::new(Mutex::new(7u64));
        let g = Arc::new(Glimpse::new(0u64));
        assert_eq!(g.read(&guarded, |v| *v), 7);
        assert_eq!(g.busy(), 0);
        *lock(&guarded) = 9;
        // Another thread holds the lock: the last figures, at once.
        let seen = crate::test_hold::while_held(&guarded, {
            let (g, guarded) = (g.clone(), guarded.clone());
            move || g.read(&guarded, |v| *v)
        });
        assert_eq!(seen, Ok(7), "the last figures at once, not a wait");
        assert_eq!(g.busy(), 1);
        assert_eq!(g.read(&guarded, |v| *v), 9, "fresh again once free");
        assert_eq!(g.busy(), 1);
    }
}
