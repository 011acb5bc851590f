//! Single requests from the event loop into a device that a vCPU may be
//! using: Ctrl+Alt+Del into the i8042 (Firecracker's `SendCtrlAltDel`),
//! a balloon size (its `PATCH /balloon`) and new buckets for a rate
//! limiter (the control socket's `set-drive` and `set-net`), which a
//! device thread holds for each request it serves.
//!
//! A vCPU thread holds such a device's lock while it serves an exit of
//! its guest, and a guest that hammers the device holds it most of the
//! time. The loop runs `SCHED_FIFO`; had it waited for the lock of a vCPU
//! it preempted, it would have waited for that thread's turn among every
//! busy vCPU, and every VM's ticks with it (design.md, "Threads"). So the
//! loop only *tries* the lock: a request that finds it held is accepted,
//! kept here and tried again at each scheduler tick until its device is
//! free. Without the scheduler's ticks (`host.cpu.scheduler` off) the loop
//! waits for the lock as before. A request for a device that already has
//! one waiting joins it, so that requests reach a device in the order
//! they came. A limiter's new buckets are reported from the moment they
//! are asked for (the handle keeps the buckets the loop set).

use std::sync::Mutex;

use super::VmId;
use crate::bus::lock_or_try;
use crate::devices::i8042::{ResetLine, I8042};
use crate::mem::BalloonHandle;
use crate::ratelimit::BucketUpdate;
use crate::virtio::net::Direction;
use crate::vm::VmDevices;

/// A request for one device of one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceRequest {
    /// Press Ctrl+Alt+Del on the i8042.
    CtrlAltDel,
    /// Ask for a balloon of `mib` MiB.
    Balloon { mib: u64 },
    /// Change a rate limiter's buckets.
    Limits {
        limiter: Limiter,
        bandwidth: BucketUpdate,
        ops: BucketUpdate,
    },
}

/// One rate limiter of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limiter {
    /// The drive at this place in the VM's drives.
    Drive(usize),
    /// A direction of the interface at this place in the VM's interfaces.
    Net(usize, Direction),
}

impl DeviceRequest {
    pub(crate) fn limits(limiter: Limiter, bandwidth: BucketUpdate, ops: BucketUpdate) -> Self {
        DeviceRequest::Limits {
            limiter,
            bandwidth,
            ops,
        }
    }

    /// Whether both are for the same device (the same limiter).
    fn same_target(&self, other: &DeviceRequest) -> bool {
        match (self, other) {
            (Self::Limits { limiter: a, .. }, Self::Limits { limiter: b, .. }) => a == b,
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }

    /// This request followed by `later`, for the same device, as one: one
    /// key press, the later balloon size, both bucket changes in order.
    fn then(self, later: DeviceRequest) -> DeviceRequest {
        match (self, later) {
            (
                Self::Limits {
                    limiter,
                    bandwidth,
                    ops,
                },
                Self::Limits {
                    bandwidth: bw2,
                    ops: ops2,
                    ..
                },
            ) => Self::Limits {
                limiter,
                bandwidth: bandwidth.then(bw2),
                ops: ops.then(ops2),
            },
            (_, later) => later,
        }
    }
}

/// What trying a request gave: `None` when another thread held the lock.
pub(crate) type Tried = Option<Result<(), String>>;

/// Presses Ctrl+Alt+Del on `keyboard` if its lock is free (or, with
/// `wait`, once it is).
pub(crate) fn ctrl_alt_del<R: ResetLine>(keyboard: &Mutex<I8042<R>>, wait: bool) -> Tried {
    let mut k = lock_or_try(keyboard, wait)?;
    Some(k.send_ctrl_alt_del().map_err(|e| e.to_string()))
}

/// Asks for a balloon of `mib` MiB if the device's lock is free (or, with
/// `wait`, once it is).
pub(crate) fn set_balloon(balloon: &BalloonHandle, mib: u64, wait: bool) -> Tried {
    let mut dev = lock_or_try(&balloon.device, wait)?;
    dev.set_target_pages(balloon.pages(mib));
    Some(Ok(()))
}

/// Tries `req` on the devices of its VM (`wait`: waits for the lock).
pub(crate) fn deliver(devices: &VmDevices, req: DeviceRequest, wait: bool) -> Tried {
    match req {
        DeviceRequest::CtrlAltDel => match &devices.keyboard {
            Some(k) => ctrl_alt_del(k, wait),
            None => Some(Err("the VM has no i8042".into())),
        },
        DeviceRequest::Balloon { mib } => match &devices.balloon {
            Some(b) => set_balloon(b, mib, wait),
            None => Some(Err("No balloon device found.".into())),
        },
        DeviceRequest::Limits {
            limiter,
            bandwidth,
            ops,
        } => {
            let applied = match limiter {
                Limiter::Drive(i) => devices
                    .disks
                    .as_ref()
                    .and_then(|d| d.drives.get(i))
                    .map(|d| d.apply_limits(bandwidth, ops, wait)),
                Limiter::Net(i, dir) => devices
                    .net
                    .get(i)
                    .map(|n| n.apply_limiter(dir, bandwidth, ops, wait)),
            };
            match applied {
                Some(done) => done.then_some(Ok(())),
                None => Some(Err(format!("the VM has no {limiter:?}"))),
            }
        }
    }
}

/// What a limiter reports from now on, before it is applied.
fn record(devices: &VmDevices, req: DeviceRequest) {
    if let DeviceRequest::Limits {
        limiter,
        bandwidth,
        ops,
    } = req
    {
        match limiter {
            Limiter::Drive(i) => {
                if let Some(d) = devices.disks.as_ref().and_then(|d| d.drives.get(i)) {
                    d.record_limits(bandwidth, ops);
                }
            }
            Limiter::Net(i, dir) => {
                if let Some(n) = devices.net.get(i) {
                    n.record_limiter(dir, bandwidth, ops);
                }
            }
        }
    }
}

impl super::Monitor {
    /// Delivers `req` to the device of the `vm`th VM now or, when a vCPU
    /// holds the device's lock and the scheduler ticks, accepts it and
    /// delivers it at a coming tick.
    pub(super) fn device_request(&mut self, vm: usize, req: DeviceRequest) -> Result<(), String> {
        let wait = !self.host.scheduler;
        let id = self.nth(vm).ok_or("no such VM")?.0;
        // The VM through its field, so that `retries` can change meanwhile.
        let e = self.vms.get(&id).ok_or("no such VM")?;
        let v = e
            .running()
            .ok_or_else(|| format!("vm {} is not running", e.name))?;
        record(&v.devices, req);
        if self.retries.join(id, req) {
            return Ok(());
        }
        match deliver(&v.devices, req, wait) {
            Some(done) => done,
            None => {
                self.retries.defer(id, req);
                Ok(())
            }
        }
    }
}

/// Requests whose device was busy, waiting for the next tick. At most one
/// per device of a VM: a newer balloon size replaces the one waiting, a
/// second Ctrl+Alt+Del before the first reached the guest is the same key
/// press, and bucket changes merge. So the list holds at most one entry
/// per device of each VM, whatever a client sends.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    waiting: Vec<(VmId, DeviceRequest)>,
    /// Requests that found their device busy.
    deferred: u64,
}

impl Retries {
    /// Keeps `req` for VM `id` until its device is free.
    pub(crate) fn defer(&mut self, id: VmId, req: DeviceRequest) {
        self.deferred += 1;
        log::debug!("VM {id}: {req:?} waits for its device (another thread holds it)");
        if !self.join(id, req) {
            self.waiting.push((id, req));
        }
    }

    /// Joins `req` to the request waiting for the same device of VM `id`,
    /// if there is one (it must go after it). False: none waits.
    pub(crate) fn join(&mut self, id: VmId, req: DeviceRequest) -> bool {
        match self
            .waiting
            .iter_mut()
            .find(|(i, r)| *i == id && r.same_target(&req))
        {
            Some((_, waiting)) => {
                *waiting = waiting.then(req);
                true
            }
            None => false,
        }
    }

    /// Tries every waiting request again with `deliver` (which answers
    /// `None` while the device is still busy, and is given `None` for the
    /// VM when it no longer runs: its requests go with it). Allocates
    /// nothing: it runs on the scheduler's tick.
    pub(crate) fn retry(&mut self, mut deliver: impl FnMut(VmId, DeviceRequest) -> Option<Tried>) {
        if self.waiting.is_empty() {
            return;
        }
        self.waiting.retain(|&(id, req)| match deliver(id, req) {
            None => false,
            Some(None) => true,
            Some(Some(Ok(()))) => false,
            Some(Some(Err(e))) => {
                log::warn!("VM {id}: {req:?} could not be delivered: {e}");
                false
            }
        });
    }

    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    #[cfg(test)]
    pub(crate) fn deferred(&self) -> u64 {
        self.deferred
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::lock;
    use std::sync::Arc;

    struct Lines;
    impl ResetLine for Lines {
        fn reset(&mut self) {}
        fn keyboard_interrupt(&mut self) {}
    }

    fn keys_waiting(k: &Mutex<I8042<Lines>>) -> usize {
        // The status register's output-buffer-full bit, then the bytes.
        let mut n = 0;
        let mut dev = lock(k);
        loop {
            let mut status = [0u8];
            crate::bus::BusDevice::read(&mut *dev, 4, &mut status);
            if status[0] & 1 == 0 {
                return n;
            }
            let mut b = [0u8];
            crate::bus::BusDevice::read(&mut *dev, 0, &mut b);
            n += 1;
        }
    }

    #[test]
    fn ctrl_alt_del_on_a_held_keyboard_is_not_a_wait_and_arrives_later() {
        let keyboard = Arc::new(Mutex::new(I8042::new(Lines)));
        let tried = crate::test_hold::while_held(&keyboard, {
            let keyboard = keyboard.clone();
            move || ctrl_alt_del(&keyboard, false)
        });
        assert_eq!(tried, Ok(None), "busy, and no wait");

        let mut retries = Retries::default();
        retries.defer(3, DeviceRequest::CtrlAltDel);
        retries.retry(|id, req| {
            assert_eq!((id, req), (3, DeviceRequest::CtrlAltDel));
            Some(ctrl_alt_del(&keyboard, false))
        });
        assert_eq!(retries.waiting(), 0);
        assert_eq!(
            keys_waiting(&keyboard),
            4,
            "the key presses reached the guest"
        );
    }

    #[test]
    fn bucket_changes_for_one_limiter_merge_in_order_and_others_wait_apart() {
        use crate::config::TokenBucketSpec;
        use BucketUpdate::{Disable, Keep, Replace};
        let spec = TokenBucketSpec {
            size: 1,
            one_time_burst: 0,
            refill_time_ms: 1,
        };
        let limits = DeviceRequest::limits;
        let drive = Limiter::Drive(0);
        let rx = Limiter::Net(0, Direction::Rx);
        let mut r = Retries::default();
        assert!(
            !r.join(1, limits(drive, Replace(spec), Keep)),
            "none waits yet"
        );
        r.defer(1, limits(drive, Replace(spec), Keep));
        // A later change to the same limiter must go after it: it joins.
        assert!(r.join(1, limits(drive, Keep, Disable)));
        assert!(r.join(1, limits(drive, Disable, Keep)));
        r.defer(1, limits(rx, Disable, Disable));
        r.defer(2, limits(drive, Keep, Keep));
        assert_eq!(r.waiting(), 3);
        let mut seen = Vec::new();
        r.retry(|id, req| {
            seen.push((id, req));
            Some(Some(Ok(())))
        });
        assert_eq!(
            seen,
            [
                (1, limits(drive, Disable, Disable)),
                (1, limits(rx, Disable, Disable)),
                (2, limits(drive, Keep, Keep)),
            ]
        );
        assert_eq!(r.waiting(), 0);
    }

    #[test]
    fn one_request_of_a_kind_waits_per_vm_and_the_newest_wins() {
        let mut r = Retries::default();
        for mib in 0..1000 {
            r.defer(1, DeviceRequest::Balloon { mib });
            r.defer(1, DeviceRequest::CtrlAltDel);
        }
        r.defer(2, DeviceRequest::Balloon { mib: 7 });
        assert_eq!(r.waiting(), 3, "bounded by the VMs, not the requests");
        assert_eq!(r.deferred(), 2001);

        let mut seen = Vec::new();
        // Still busy: every request stays.
        r.retry(|id, req| {
            seen.push((id, req));
            Some(None)
        });
        assert_eq!(r.waiting(), 3);
        assert!(seen.contains(&(1, DeviceRequest::Balloon { mib: 999 })));
        assert!(seen.contains(&(2, DeviceRequest::Balloon { mib: 7 })));

        // VM 2 is gone; VM 1's balloon goes through, its key press fails.
        r.retry(|id, req| match (id, req) {
            (2, _) => None,
            (_, DeviceRequest::Balloon { .. }) => Some(Some(Ok(()))),
            _ => Some(Some(Err("the i8042 keyboard buffer is full".into()))),
        });
        assert_eq!(r.waiting(), 0);
    }
}
