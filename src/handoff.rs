//! Hand-offs to and from the event loop, which runs `SCHED_FIFO`: a
//! queue behind a mutex and a condition variable, not `std::sync::mpsc`.
//!
//! std's channels are lock-free. A receiver that finds a message half
//! sent (its sender has taken the slot and not yet written it), or a
//! sender that finds the next block of slots half installed, waits for
//! the other thread by spinning and then calling `sched_yield`. A
//! real-time thread's `sched_yield` hands the CPU only to real-time
//! threads of its own priority: when the event loop has preempted a
//! life-cycle worker in the middle of its send, on the same CPU, and then
//! receives, it spins until the kernel's real-time throttling (by default
//! 50 ms of every second go to normal threads) lets the worker finish,
//! and with throttling off it spins for ever. Seen: a stop of 200 VMs on
//! one CPU in which the loop spent 0.9 s in `Channel::read` and
//! `sched_yield` and no VM got a tick; and this module's test, in which
//! a real-time reader of a channel fed by four normal threads on its CPU
//! took up to 1 s to drain it and spent 80 % of the CPU spinning.
//!
//! A contended mutex puts its waiter to sleep in the kernel (a futex), so
//! the thread that holds it gets the CPU and lets it go; what the lock
//! guards here is one push or one pop.
//!
//! Channels stay where no real-time thread waits on one: a vCPU's
//! commands (one sender at a time, whoever holds the VM, and the vCPU
//! thread, a normal one, receives) and the start-up reports of device
//! threads to the worker that starts them.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::bus::lock;

/// Why [`Handoff::push`] gave an item back.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<T> {
    /// A bounded hand-off holds as many as it may.
    Full(T),
    /// The hand-off was closed: nobody takes items any more.
    Closed(T),
}

/// Another thread holds the hand-off's lock now.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// A first-in first-out queue between threads, bounded or not.
pub struct Handoff<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    capacity: usize,
}

impl<T> Default for Handoff<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Handoff<T> {
    /// A hand-off that holds any number of items.
    pub fn new() -> Self {
        Self::bounded(usize::MAX)
    }

    /// A hand-off that holds at most `capacity` items (at least one).
    pub fn bounded(capacity: usize) -> Self {
        Handoff {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `item`, or gives it back when the hand-off is full or closed.
    pub fn push(&self, item: T) -> Result<(), Refused<T>> {
        let mut s = lock(&self.state);
        if s.closed {
            return Err(Refused::Closed(item));
        }
        if s.items.len() >= self.capacity {
            return Err(Refused::Full(item));
        }
        s.items.push_back(item);
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// The oldest item, if there is one.
    pub fn try_pop(&self) -> Option<T> {
        lock(&self.state).items.pop_front()
    }

    /// [`Handoff::try_pop`] without waiting for the lock: `Err(Busy)`
    /// while another thread pushes or pops. For a real-time thread, which
    /// would otherwise sleep until a normal thread that holds the lock,
    /// and may have been preempted by it, gets a CPU again.
    pub fn try_pop_now(&self) -> Result<Option<T>, Busy> {
        match self.state.try_lock() {
            Ok(mut s) => Ok(s.items.pop_front()),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner().items.pop_front()),
            Err(std::sync::TryLockError::WouldBlock) => Err(Busy),
        }
    }

    /// The oldest item, waiting for one as long as the hand-off is open.
    /// `None` once it is closed and empty.
    pub fn pop(&self) -> Option<T> {
        let mut s = lock(&self.state);
        loop {
            if let Some(item) = s.items.pop_front() {
                return Some(item);
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// [`Handoff::pop`], waiting at most `within`.
    pub fn pop_timeout(&self, within: Duration) -> Option<T> {
        let deadline = Instant::now() + within;
        let mut s = lock(&self.state);
        loop {
            if let Some(item) = s.items.pop_front() {
                return Some(item);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if s.closed || left.is_zero() {
                return None;
            }
            s = self
                .ready
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Refuses every later push; the items queued can still be taken, and
    /// a waiting [`Handoff::pop`] returns `None` once they are.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn items_come_out_in_the_order_they_went_in() {
        let m = Handoff::new();
        for i in 0..100 {
            m.push(i).unwrap();
        }
        let out: Vec<_> = std::iter::from_fn(|| m.try_pop()).collect();
        assert_eq!(out, (0..100).collect::<Vec<_>>());
        assert_eq!(m.try_pop(), None);
    }

    #[test]
    fn a_bounded_handoff_gives_back_what_does_not_fit() {
        let m = Handoff::bounded(1);
        m.push("a").unwrap();
        assert_eq!(m.push("b"), Err(Refused::Full("b")));
        assert_eq!(m.try_pop(), Some("a"));
        m.push("c").unwrap();
        assert_eq!(m.try_pop(), Some("c"));
    }

    #[test]
    fn try_pop_now_does_not_wait_for_a_holder_of_the_lock() {
        let m = Arc::new(Handoff::new());
        m.push(1).unwrap();
        let held = lock(&m.state);
        let other = {
            let m = m.clone();
            std::thread::spawn(move || m.try_pop_now())
        };
        assert_eq!(other.join().unwrap(), Err(Busy));
        drop(held);
        assert_eq!(m.try_pop_now(), Ok(Some(1)));
        assert_eq!(m.try_pop_now(), Ok(None));
    }

    #[test]
    fn a_closed_handoff_refuses_pushes_and_hands_out_what_it_holds() {
        let m = Handoff::new();
        m.push(1).unwrap();
        m.close();
        assert_eq!(m.push(2), Err(Refused::Closed(2)));
        assert_eq!(m.pop(), Some(1));
        assert_eq!(m.pop(), None);
        assert_eq!(m.pop_timeout(Duration::from_secs(5)), None);
    }

    #[test]
    fn a_waiting_pop_gets_an_item_pushed_from_another_thread_or_the_close() {
        let m = Arc::new(Handoff::new());
        let pusher = {
            let m = m.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                m.push(7).unwrap();
                std::thread::sleep(Duration::from_millis(20));
                m.close();
            })
        };
        assert_eq!(m.pop_timeout(Duration::from_secs(30)), Some(7));
        assert_eq!(m.pop(), None);
        pusher.join().unwrap();
        assert_eq!(m.pop_timeout(Duration::from_millis(1)), None);
    }

    fn pin_to_first_allowed_cpu() {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls get
        // its address and size, and act on the calling thread only.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_getaffinity(0, size, &mut set), 0);
            let cpu = (0..libc::CPU_SETSIZE as usize)
                .find(|&c| libc::CPU_ISSET(c, &set))
                .unwrap();
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
        }
    }

    fn thread_cpu_time() -> Duration {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }

    /// The event loop's situation: a `SCHED_FIFO` reader wakes up often
    /// and takes everything that four normal threads on its CPU hand it.
    /// It must sleep while it waits for a writer it preempted, not spin:
    /// std's channel here kept the reader on the CPU 80 % of the time, with
    /// drains of up to 1 s (the kernel's real-time throttling ended them).
    #[test]
    fn a_real_time_reader_never_spins_on_a_writer_it_preempted() {
        let m = Arc::new(Handoff::new());
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                pin_to_first_allowed_cpu();
                let writers: Vec<_> = (0..4)
                    .map(|_| {
                        let (m, stop) = (m.clone(), stop.clone());
                        // Started after the pin: they share the reader's CPU.
                        std::thread::spawn(move || {
                            let mut i = 0u64;
                            while !stop.load(Ordering::Relaxed) {
                                m.push(i).unwrap();
                                i += 1;
                                let t = Instant::now();
                                while t.elapsed() < Duration::from_micros(2) {
                                    std::hint::spin_loop();
                                }
                            }
                        })
                    })
                    .collect();
                let param = libc::sched_param { sched_priority: 1 };
                // SAFETY: `param` is valid; pid 0 is the calling thread.
                let rt = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0;
                let (cpu0, wall0) = (thread_cpu_time(), Instant::now());
                let mut taken = 0u64;
                while rt && wall0.elapsed() < Duration::from_millis(1500) {
                    std::thread::sleep(Duration::from_micros(500));
                    while m.try_pop().is_some() {
                        taken += 1;
                    }
                }
                let share = (thread_cpu_time() - cpu0).as_secs_f64()
                    / wall0.elapsed().as_secs_f64().max(1e-9);
                stop.store(true, Ordering::Relaxed);
                for w in writers {
                    w.join().unwrap();
                }
                (rt, taken, share)
            })
        };
        let (rt, taken, share) = reader.join().unwrap();
        if !rt {
            eprintln!("skipped: SCHED_FIFO is not allowed here (needs CAP_SYS_NICE)");
            return;
        }
        assert!(taken > 0, "the reader took nothing");
        assert!(
            share < 0.5,
            "the real-time reader was on the CPU {:.0} % of the time: it spins",
            share * 100.0
        );
    }
}
