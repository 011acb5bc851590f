//! How a VM ends, decided in one place.
//!
//! A VM is running until one of its vCPUs or the monitor asks it to stop;
//! the first reason given is the one kept. Stopping is a one-way transition:
//! later requests are ignored, so a reset that races an emulation failure on
//! another vCPU reports whichever happened first.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest reset itself (i8042 reset line, or a KVM reset event).
    Reset,
    /// The guest powered off.
    PowerOff,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault { vcpu: u8, rip: u64 },
    /// KVM could not run the guest's code (KVM_EXIT_INTERNAL_ERROR).
    InternalError {
        vcpu: u8,
        suberror: u32,
        rip: u64,
        /// Instruction bytes at RIP, when they could be read.
        code: Vec<u8>,
    },
    /// KVM failed to enter the guest (KVM_EXIT_FAIL_ENTRY).
    FailEntry { vcpu: u8, reason: u64 },
    /// The guest reported a crash (KVM_SYSTEM_EVENT_CRASH).
    Crash { vcpu: u8 },
    /// The guest broke its access control list too often (`on_violation`
    /// `stop-vm` or `stop-vm-after N`): `count` violations, the last one
    /// described in `last`.
    AccessViolation { count: u64, last: String },
    /// A vCPU hit something the monitor could not handle.
    Error(String),
    /// The monitor stopped the VM (a signal, the user's escape key).
    Stopped(String),
}

impl VmOutcome {
    /// Whether this is an orderly end: the guest reset or powered off, or
    /// the user asked the monitor to stop.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            VmOutcome::Reset | VmOutcome::PowerOff | VmOutcome::Stopped(_)
        )
    }

    /// Whether the guest itself failed (as opposed to being stopped).
    pub fn is_guest_failure(&self) -> bool {
        !self.is_clean()
    }
}

/// KVM's suberror for an instruction its emulator could not handle.
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

impl fmt::Display for VmOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmOutcome::Reset => write!(f, "guest reset"),
            VmOutcome::PowerOff => write!(f, "guest powered off"),
            VmOutcome::TripleFault { vcpu, rip } => {
                write!(f, "triple fault on vCPU {vcpu} at RIP {rip:#x}")
            }
            VmOutcome::InternalError {
                vcpu,
                suberror,
                rip,
                code,
            } => {
                let what = if *suberror == KVM_INTERNAL_ERROR_EMULATION {
                    "emulation failure".to_string()
                } else {
                    format!("suberror {suberror}")
                };
                write!(
                    f,
                    "KVM internal error ({what}) on vCPU {vcpu} at RIP {rip:#x}"
                )?;
                if code.is_empty() {
                    write!(f, ", instruction bytes unreadable")
                } else {
                    let hex: Vec<String> = code.iter().map(|b| format!("{b:02x}")).collect();
                    write!(f, ", instruction bytes: {}", hex.join(" "))
                }
            }
            VmOutcome::FailEntry { vcpu, reason } => {
                write!(
                    f,
                    "KVM failed to enter vCPU {vcpu} (hardware reason {reason:#x})"
                )
            }
            VmOutcome::Crash { vcpu } => write!(f, "guest reported a crash on vCPU {vcpu}"),
            VmOutcome::AccessViolation { count, last } => write!(
                f,
                "stopped by the access verifier after {count} violation(s); the last: {last}"
            ),
            VmOutcome::Error(msg) => write!(f, "error: {msg}"),
            VmOutcome::Stopped(why) => write!(f, "stopped: {why}"),
        }
    }
}

/// Where VMs that start stopping say so: one eventfd the monitor's event
/// loop watches for all its VMs, and the ids of those that stopped.
pub struct ExitQueue {
    evt: EventFd,
    ids: Mutex<Vec<usize>>,
}

impl ExitQueue {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(ExitQueue {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            ids: Mutex::new(Vec::new()),
        }))
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// The VMs that started stopping since the last call.
    pub fn take(&self) -> Vec<usize> {
        let _ = self.evt.read();
        std::mem::take(&mut *lock(&self.ids))
    }

    fn push(&self, id: usize) {
        lock(&self.ids).push(id);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot signal the monitor that VM {id} stops: {e}");
        }
    }
}

/// State a VM's vCPU threads share with the monitor.
pub struct VmShared {
    pub name: String,
    stopping: AtomicBool,
    outcome: Mutex<Option<VmOutcome>>,
    /// Told (with `id`) when the VM starts stopping.
    exits: Arc<ExitQueue>,
    id: usize,
}

impl VmShared {
    /// The state of VM `id`, which reports its stop to `exits`.
    pub fn new(name: &str, exits: Arc<ExitQueue>, id: usize) -> Self {
        VmShared {
            name: name.to_string(),
            stopping: AtomicBool::new(false),
            outcome: Mutex::new(None),
            exits,
            id,
        }
    }

    /// Asks the VM to stop for `outcome`. Only the first request counts;
    /// returns whether this one did.
    pub fn request_stop(&self, outcome: VmOutcome) -> bool {
        let mut slot = lock(&self.outcome);
        if slot.is_some() {
            return false;
        }
        log::debug!("{}: stopping: {outcome}", self.name);
        *slot = Some(outcome);
        self.stopping.store(true, Ordering::Release);
        drop(slot);
        self.exits.push(self.id);
        true
    }

    /// Whether the VM is stopping (checked by vCPUs after every exit).
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The reason the VM stopped, once it has.
    pub fn outcome(&self) -> Option<VmOutcome> {
        lock(&self.outcome).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_reason_wins() {
        let exits = ExitQueue::new().unwrap();
        let vm = VmShared::new("t", exits.clone(), 7);
        assert!(!vm.stopping());
        assert!(vm.request_stop(VmOutcome::Reset));
        assert!(!vm.request_stop(VmOutcome::Error("late".into())));
        assert!(vm.stopping());
        assert_eq!(vm.outcome(), Some(VmOutcome::Reset));
        assert_eq!(exits.take(), vec![7]);
        assert!(exits.take().is_empty());
    }

    #[test]
    fn emulation_failures_show_rip_and_bytes() {
        let o = VmOutcome::InternalError {
            vcpu: 1,
            suberror: 1,
            rip: 0xffff_ffff_8100_0000,
            code: vec![0xf3, 0x0f, 0xb8, 0xc0],
        };
        assert!(o.is_guest_failure());
        assert_eq!(
            o.to_string(),
            "KVM internal error (emulation failure) on vCPU 1 at RIP 0xffffffff81000000, instruction bytes: f3 0f b8 c0"
        );
        assert!(VmOutcome::Reset.is_clean());
        assert!(!VmOutcome::TripleFault { vcpu: 0, rip: 0 }.is_clean());
    }
}
