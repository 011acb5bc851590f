//! Requests answered later: creating, restarting or deleting a VM waits
//! for a worker to build or tear it down, and the event loop that serves
//! the control socket does not wait with it. The monitor keeps a
//! [`Waiter`] with the VM and completes it when the VM gets there; the
//! server that holds the connection then writes the reply.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;

/// The answer to one request: now, or later through its [`Waiter`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Now(Value),
    Later,
}

/// Which deferred request an answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(pub u64);

/// Answers to one server's deferred requests, and the eventfd that wakes it.
pub struct Completions {
    next: AtomicU64,
    done: Mutex<Vec<(Ticket, Result<Value, String>)>>,
    evt: EventFd,
}

impl Completions {
    pub fn new() -> io::Result<Arc<Self>> {
        Ok(Arc::new(Completions {
            next: AtomicU64::new(1),
            done: Mutex::new(Vec::new()),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        }))
    }

    /// A waiter for one more deferred request.
    pub fn waiter(self: &Arc<Self>) -> Waiter {
        Waiter {
            ticket: Ticket(self.next.fetch_add(1, Ordering::Relaxed)),
            to: self.clone(),
        }
    }

    /// The answers that arrived since the last call.
    pub fn take(&self) -> Vec<(Ticket, Result<Value, String>)> {
        let _ = self.evt.read();
        std::mem::take(&mut *lock(&self.done))
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// The promise to answer one request.
pub struct Waiter {
    pub ticket: Ticket,
    to: Arc<Completions>,
}

impl Waiter {
    pub fn complete(self, answer: Result<Value, String>) {
        lock(&self.to.done).push((self.ticket, answer));
        if let Err(e) = self.to.evt.write(1) {
            log::error!("control socket: cannot wake the server for an answer: {e}");
        }
    }
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Waiter({})", self.ticket.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_reaches_its_ticket() {
        let c = Completions::new().unwrap();
        let (a, b) = (c.waiter(), c.waiter());
        assert_ne!(a.ticket, b.ticket);
        let t = b.ticket;
        b.complete(Ok(serde_json::json!(1)));
        assert_eq!(c.take(), vec![(t, Ok(serde_json::json!(1)))]);
        assert!(c.take().is_empty());
        drop(a);
    }
}
