//! For unit tests: what a real-time thread's call does while another
//! thread (a vCPU, a device thread) holds a lock it needs.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bus::lock;

/// How long a call may take before it counts as waiting for the lock.
const PATIENCE: Duration = Duration::from_secs(10);

/// Runs `call` on a thread of its own while another thread holds
/// `guarded`, then lets the lock go. `Err` when `call` had not returned
/// after 10 s: it waited for the lock. The call runs apart so that a
/// regression fails the test instead of hanging it.
pub fn while_held<T, R>(
    guarded: &Arc<Mutex<T>>,
    call: impl FnOnce() -> R + Send + 'static,
) -> Result<R, RecvTimeoutError>
where
    T: Send + 'static,
    R: Send + 'static,
{
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn({
        let guarded = guarded.clone();
        move || {
            let _held = lock(&guarded);
            let _ = held_tx.send(());
            let _ = release_rx.recv();
        }
    });
    held_rx.recv().expect("the holder took the lock");
    let (done_tx, done_rx) = mpsc::channel();
    let caller = std::thread::spawn(move || {
        let _ = done_tx.send(call());
    });
    let result = done_rx.recv_timeout(PATIENCE);
    let _ = release_tx.send(());
    holder.join().expect("holder");
    caller.join().expect("caller");
    result
}
