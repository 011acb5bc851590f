//! The device plan: which devices a validated VM gets, under which names,
//! in which virtio-mmio slots, and the kernel command line that announces
//! them. One source of truth: validation checks the plan (the command line
//! fits, the devices fit the slots, ACL rules name devices that exist) and
//! the builder registers exactly these devices under these names.

use crate::devices::cmos::{CMOS_BASE, CMOS_LEN};
use crate::devices::i8042::{I8042_BASE, I8042_LEN};
use crate::devices::serial::{COM1_BASE, COM1_LEN};
use crate::layout::{cmdline_token, mmio_slot, MmioSlot};

use super::acl::AclTarget;
use super::error::Errors;
use super::spec::{BalloonMode, VmSpec, MAX_CMDLINE_LEN};
use super::validate::Naming;

/// What a virtio device is; indexes are into the spec's lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Balloon,
    /// `VmSpec::drives[i]`.
    Block(usize),
    /// `VmSpec::net[i]`.
    Net(usize),
    Vsock,
}

/// One virtio-mmio device of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDevice {
    /// `balloon0`, `blk0`, `net0`, `vsock0`: the bus name and the name
    /// ACL rules use.
    pub name: String,
    pub kind: DeviceKind,
    pub slot: MmioSlot,
}

/// A port-I/O device every VM has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyDevice {
    pub name: &'static str,
    pub base: u64,
    pub len: u64,
}

/// The port-I/O devices of every VM, in registration order.
pub const LEGACY_DEVICES: [LegacyDevice; 3] = [
    LegacyDevice {
        name: "serial0",
        base: COM1_BASE,
        len: COM1_LEN,
    },
    LegacyDevice {
        name: "i8042",
        base: I8042_BASE,
        len: I8042_LEN,
    },
    LegacyDevice {
        name: "cmos",
        base: CMOS_BASE,
        len: CMOS_LEN,
    },
];

/// Everything the builder needs to give a VM its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    /// In slot order: the balloon, the drives (root first), the network
    /// interfaces, the vsock device.
    pub virtio: Vec<PlannedDevice>,
    /// Names of devices beyond the last slot (validation refuses such a VM).
    pub unplaced: Vec<String>,
    pub legacy: &'static [LegacyDevice],
    /// The user's command line plus `root=` arguments for a root drive and
    /// one `virtio_mmio.device=` token per device, before any ` -- `.
    pub cmdline: String,
}

impl DevicePlan {
    /// Every device name of the VM, legacy ones first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let legacy = self.legacy.iter().map(|d| d.name);
        legacy.chain(self.virtio.iter().map(|d| d.name.as_str()))
    }
}

impl VmSpec {
    /// The VM's devices and final command line. A balloon is planned when
    /// `memory.balloon` is `On`; validation resolves `Auto` to `On` under a
    /// memory budget, so a validated `Auto` means no budget and no balloon.
    pub fn device_plan(&self) -> DevicePlan {
        let mut wanted: Vec<(String, DeviceKind)> = Vec::new();
        if self.memory.balloon == BalloonMode::On {
            wanted.push(("balloon0".into(), DeviceKind::Balloon));
        }
        for i in 0..self.drives.len() {
            wanted.push((format!("blk{i}"), DeviceKind::Block(i)));
        }
        for i in 0..self.net.len() {
            wanted.push((format!("net{i}"), DeviceKind::Net(i)));
        }
        if self.vsock.is_some() {
            wanted.push(("vsock0".into(), DeviceKind::Vsock));
        }
        let mut virtio = Vec::with_capacity(wanted.len());
        let mut unplaced = Vec::new();
        for (i, (name, kind)) in wanted.into_iter().enumerate() {
            match mmio_slot(i) {
                Some(slot) => virtio.push(PlannedDevice { name, kind, slot }),
                None => unplaced.push(name),
            }
        }
        let mut added: Vec<String> = Vec::new();
        if let Some(root) = self.drives.first().filter(|d| d.root) {
            added.push(match &root.partuuid {
                Some(uuid) => format!("root=PARTUUID={uuid}"),
                None => "root=/dev/vda".into(),
            });
            added.push(if root.read_only { "ro" } else { "rw" }.into());
        }
        added.extend(virtio.iter().map(|d| cmdline_token(d.slot)));
        DevicePlan {
            cmdline: with_kernel_args(&self.kernel.cmdline, &added.join(" ")),
            virtio,
            unplaced,
            legacy: &LEGACY_DEVICES,
        }
    }
}

/// `cmdline` with `args` added to the kernel's own arguments: before a
/// ` -- ` that starts the arguments for init, if there is one (outside quotes).
fn with_kernel_args(cmdline: &str, args: &str) -> String {
    let (kernel, init) = match init_separator(cmdline) {
        Some(at) => (cmdline[..at].trim_end(), Some(&cmdline[at..])),
        None => (cmdline.trim_end(), None),
    };
    let parts = [kernel, args, init.unwrap_or("")];
    let parts: Vec<&str> = parts.into_iter().filter(|p| !p.is_empty()).collect();
    parts.join(" ")
}

/// Byte offset of a standalone `--` outside double quotes.
fn init_separator(cmdline: &str) -> Option<usize> {
    let bytes = cmdline.as_bytes();
    let mut quoted = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'-' if !quoted
                && bytes.get(i + 1) == Some(&b'-')
                && (i == 0 || bytes[i - 1] == b' ')
                && bytes.get(i + 2).is_none_or(|&c| c == b' ') =>
            {
                return Some(i);
            }
            _ => {}
        }
    }
    None
}

/// Checks a validated VM's plan: its devices fit the slots, its final
/// command line fits, and its ACL names only devices it has.
pub(crate) fn check_plan(vm: &VmSpec, naming: &Naming, errors: &mut Errors) {
    let plan = vm.device_plan();
    if !plan.unplaced.is_empty() {
        let all: Vec<&str> = plan.virtio.iter().map(|d| d.name.as_str()).collect();
        errors.push(
            naming.vm(),
            format!(
                "has {} virtio devices ({}, {}) but a VM has {} slots; {} would have none",
                all.len() + plan.unplaced.len(),
                all.join(", "),
                plan.unplaced.join(", "),
                all.len(),
                plan.unplaced.join(", ")
            ),
        );
    }
    let user = vm.kernel.cmdline.len();
    if plan.cmdline.len() > MAX_CMDLINE_LEN {
        errors.push(
            naming.at("kernel.cmdline"),
            format!(
                "{user} bytes, plus the {} bytes Hearth adds for this VM's devices \
                 (virtio_mmio.device=..., root=...), is {}: longer than the maximum of \
                 {MAX_CMDLINE_LEN}",
                plan.cmdline.len() - user,
                plan.cmdline.len()
            ),
        );
    }
    for (i, rule) in vm.acl.rules.iter().enumerate() {
        let AclTarget::Device(name) = &rule.target else {
            continue;
        };
        if !plan.names().any(|n| n == name) {
            let known: Vec<&str> = plan.names().collect();
            errors.push(
                naming.at(&format!("acl.rules[{i}].device")),
                format!(
                    "{name:?} is not a device of this VM (it has: {})",
                    known.join(", ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_args_go_before_the_init_arguments() {
        assert_eq!(
            with_kernel_args("console=ttyS0", "x=1"),
            "console=ttyS0 x=1"
        );
        assert_eq!(with_kernel_args("", "x=1"), "x=1");
        assert_eq!(with_kernel_args("a ", ""), "a");
        assert_eq!(with_kernel_args("a -- init b", "x=1"), "a x=1 -- init b");
        assert_eq!(with_kernel_args("-- init", "x=1"), "x=1 -- init");
        assert_eq!(with_kernel_args("a --", "x=1"), "a x=1 --");
        assert_eq!(
            with_kernel_args("a=\"p -- q\" b", "x=1"),
            "a=\"p -- q\" b x=1"
        );
        assert_eq!(with_kernel_args("a --b c--", "x=1"), "a --b c-- x=1");
    }
}
