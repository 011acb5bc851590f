//! The ACL compiler: a VM's [`AclSpec`] plus the ranges of the devices it
//! was given, turned into sorted, non-overlapping ranges per address space,
//! each saying which rule decides each kind of access (read or write, 1, 2,
//! 4 or 8 bytes). Runs once, when the VM is built.
//!
//! Precedence: rule 0 is the default (it covers every address); then one
//! implicit `allow` rule per device range (when `own_devices` is on); then
//! the user's rules in their order. For every address and every kind of
//! access, the *last* rule that matches decides.

use std::fmt;
use std::sync::Arc;

use crate::bus::AddressSpace;
use crate::config::{AclAction, AclSpec, AclTarget, ALL_SIZES};

/// A device range the VM was given, as registered on its bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRange {
    pub space: AddressSpace,
    pub name: String,
    pub first: u64,
    pub last: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("acl.{rule}.device: this VM has no device {name:?} (it has: {known})")]
    UnknownDevice {
        rule: String,
        name: String,
        known: String,
    },
}

/// A compiled rule: what it is (for counters and messages) and its action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// `default`, `device serial0` (an implicit rule) or `rules[2]`.
    /// Shared, not owned: the statistics copy it once a second.
    pub label: Arc<str>,
    /// What it covers, e.g. `ports 0x70-0x71` or `all`.
    pub target: Arc<str>,
    pub action: AclAction,
}

/// Which kind of access: bit 0-3 reads of 1, 2, 4, 8 bytes; 4-7 writes.
pub(crate) const SLOTS: usize = 8;

/// One compiled range: `first..=last`, and for each access kind (slot) the
/// index of the rule that decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub first: u64,
    pub last: u64,
    pub rules: [u16; SLOTS],
}

/// The compiled policy: rules, and ranges covering each whole space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Compiled {
    pub rules: Vec<RuleInfo>,
    pub pio: Vec<Range>,
    pub mmio: Vec<Range>,
}

/// The last port.
pub(crate) const PIO_LAST: u64 = 0xffff;

/// A rule placed in one space: `first..=last`, the slots it matches.
struct Placed {
    rule: u16,
    first: u64,
    last: u64,
    slots: u8,
}

fn space_name(space: AddressSpace) -> &'static str {
    match space {
        AddressSpace::Pio => "ports",
        AddressSpace::Mmio => "mmio",
    }
}

/// The slot mask of a rule matching `read`/`write` at the sizes in `sizes`.
fn slot_mask(read: bool, write: bool, sizes: u8) -> u8 {
    let sizes = sizes & ALL_SIZES;
    (if read { sizes } else { 0 }) | (if write { sizes << 4 } else { 0 })
}

/// Rules in precedence order and where each applies, while compiling.
#[derive(Default)]
struct Painter {
    rules: Vec<RuleInfo>,
    placed: Vec<(AddressSpace, Placed)>,
}

impl Painter {
    /// Adds a rule covering `ranges` for the access slots in `slots`.
    fn paint(&mut self, info: RuleInfo, ranges: &[SpaceRange], slots: u8) {
        self.rules.push(info);
        // The number of rules is bounded by validation (MAX_ACL_RULES) plus
        // the devices of one VM, far below u16::MAX.
        let rule = u16::try_from(self.rules.len() - 1).unwrap_or(u16::MAX);
        for &(space, first, last) in ranges {
            self.placed.push((
                space,
                Placed {
                    rule,
                    first,
                    last,
                    slots,
                },
            ));
        }
    }

    fn in_space(&self, space: AddressSpace) -> Vec<&Placed> {
        self.placed
            .iter()
            .filter(|(s, _)| *s == space)
            .map(|(_, p)| p)
            .collect()
    }
}

/// An inclusive range of one address space.
type SpaceRange = (AddressSpace, u64, u64);

/// What a rule's target covers: its label and ranges.
fn target_ranges(
    target: &AclTarget,
    label: &str,
    devices: &[DeviceRange],
) -> Result<(String, Vec<SpaceRange>), CompileError> {
    Ok(match target {
        AclTarget::Ports { first, last } => (
            format!("ports {first:#x}-{last:#x}"),
            vec![(AddressSpace::Pio, *first, *last)],
        ),
        AclTarget::Mmio { first, last } => (
            format!("mmio {first:#x}-{last:#x}"),
            vec![(AddressSpace::Mmio, *first, *last)],
        ),
        AclTarget::Device(name) => {
            let found: Vec<_> = devices
                .iter()
                .filter(|d| d.name == *name)
                .map(|d| (d.space, d.first, d.last))
                .collect();
            if found.is_empty() {
                let mut known: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
                known.dedup();
                return Err(CompileError::UnknownDevice {
                    rule: label.to_string(),
                    name: name.clone(),
                    known: known.join(", "),
                });
            }
            (format!("device {name}"), found)
        }
    })
}

/// Compiles `spec` for a VM with `devices`.
pub(crate) fn compile(spec: &AclSpec, devices: &[DeviceRange]) -> Result<Compiled, CompileError> {
    let mut p = Painter::default();
    p.rules.push(RuleInfo {
        label: "default".into(),
        target: "all".into(),
        action: spec.default,
    });
    if spec.own_devices {
        for d in devices {
            let info = RuleInfo {
                label: format!("device {}", d.name).into(),
                target: format!("{} {:#x}-{:#x}", space_name(d.space), d.first, d.last).into(),
                action: AclAction::Allow,
            };
            p.paint(info, &[(d.space, d.first, d.last)], 0xff);
        }
    }
    for (i, r) in spec.rules.iter().enumerate() {
        let label = format!("rules[{i}]");
        let (target, ranges) = target_ranges(&r.target, &label, devices)?;
        let info = RuleInfo {
            label: label.into(),
            target: target.into(),
            action: r.action,
        };
        p.paint(info, &ranges, slot_mask(r.read, r.write, r.sizes));
    }
    Ok(Compiled {
        pio: compile_space(&p.in_space(AddressSpace::Pio), PIO_LAST),
        mmio: compile_space(&p.in_space(AddressSpace::Mmio), u64::MAX),
        rules: p.rules,
    })
}

/// Paints the rules of one space, in order, over `0..=max` and merges
/// neighbours that ended up with the same decisions.
fn compile_space(placed: &[&Placed], max: u64) -> Vec<Range> {
    // Elementary intervals: every rule starts one and ends before another.
    let mut starts: Vec<u64> = vec![0];
    for p in placed {
        let last = p.last.min(max);
        if p.first > last {
            continue;
        }
        starts.push(p.first);
        if last < max {
            starts.push(last + 1);
        }
    }
    starts.sort_unstable();
    starts.dedup();
    let mut out: Vec<Range> = Vec::with_capacity(starts.len());
    for (i, &first) in starts.iter().enumerate() {
        let last = starts.get(i + 1).map_or(max, |next| next - 1);
        let mut rules = [0u16; SLOTS];
        for p in placed {
            if p.first <= first && last <= p.last {
                for (slot, rule) in rules.iter_mut().enumerate() {
                    if p.slots & (1 << slot) != 0 {
                        *rule = p.rule;
                    }
                }
            }
        }
        match out.last_mut() {
            Some(prev) if prev.rules == rules => prev.last = last,
            _ => out.push(Range { first, last, rules }),
        }
    }
    out
}

impl fmt::Display for Compiled {
    /// One line per compiled range, for `debug` logs and tests.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (space, ranges) in [("pio", &self.pio), ("mmio", &self.mmio)] {
            for r in ranges {
                write!(f, "{space} {:#x}-{:#x}:", r.first, r.last)?;
                for rule in r.rules {
                    let label = self.rules.get(usize::from(rule)).map_or("?", |i| &*i.label);
                    write!(f, " {label}")?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AclRuleSpec, OnViolation};

    fn dev(space: AddressSpace, name: &str, first: u64, last: u64) -> DeviceRange {
        DeviceRange {
            space,
            name: name.into(),
            first,
            last,
        }
    }

    fn standard_devices() -> Vec<DeviceRange> {
        vec![
            dev(AddressSpace::Pio, "i8042", 0x60, 0x64),
            dev(AddressSpace::Pio, "cmos", 0x70, 0x71),
            dev(AddressSpace::Pio, "serial0", 0x3f8, 0x3ff),
        ]
    }

    fn rule(
        target: AclTarget,
        read: bool,
        write: bool,
        sizes: u8,
        action: AclAction,
    ) -> AclRuleSpec {
        AclRuleSpec {
            target,
            read,
            write,
            sizes,
            action,
        }
    }

    /// The rule label deciding each slot of the range holding `addr`.
    fn at(c: &Compiled, space: AddressSpace, addr: u64) -> Vec<&str> {
        let ranges = match space {
            AddressSpace::Pio => &c.pio,
            AddressSpace::Mmio => &c.mmio,
        };
        let r = ranges
            .iter()
            .find(|r| r.first <= addr && addr <= r.last)
            .expect("the ranges cover the space");
        r.rules
            .iter()
            .map(|i| &*c.rules[usize::from(*i)].label)
            .collect()
    }

    fn assert_partition(ranges: &[Range], max: u64) {
        assert_eq!(ranges.first().map(|r| r.first), Some(0));
        assert_eq!(ranges.last().map(|r| r.last), Some(max));
        for w in ranges.windows(2) {
            assert_eq!(w[0].last + 1, w[1].first, "sorted, no gap, no overlap");
            assert_ne!(w[0].rules, w[1].rules, "neighbours are merged");
        }
    }

    #[test]
    fn by_default_only_own_devices_are_allowed() {
        let c = compile(&AclSpec::default(), &standard_devices()).unwrap();
        assert_partition(&c.pio, PIO_LAST);
        assert_partition(&c.mmio, u64::MAX);
        assert_eq!(c.pio.len(), 7, "{c}");
        assert_eq!(c.mmio.len(), 1);
        assert_eq!(at(&c, AddressSpace::Pio, 0x3fb), ["device serial0"; 8]);
        assert_eq!(at(&c, AddressSpace::Pio, 0x65), ["default"; 8]);
        assert_eq!(at(&c, AddressSpace::Mmio, 0xd000_0000), ["default"; 8]);
        assert_eq!(c.rules[0].action, AclAction::Deny);
        assert_eq!(&*c.rules[1].target, "ports 0x60-0x64");
    }

    #[test]
    fn later_rules_win_per_access_kind() {
        let spec = AclSpec {
            rules: vec![
                // Deny cmos reads; writes stay allowed by the device rule.
                rule(
                    AclTarget::Device("cmos".into()),
                    true,
                    false,
                    ALL_SIZES,
                    AclAction::DenyAndLog,
                ),
                // A broad deny over 0x00-0xff, then a narrow allow inside it.
                rule(
                    AclTarget::Ports {
                        first: 0,
                        last: 0xff,
                    },
                    true,
                    true,
                    ALL_SIZES,
                    AclAction::Deny,
                ),
                rule(
                    AclTarget::Ports {
                        first: 0x80,
                        last: 0x80,
                    },
                    false,
                    true,
                    1,
                    AclAction::Allow,
                ),
            ],
            ..AclSpec::default()
        };
        let c = compile(&spec, &standard_devices()).unwrap();
        assert_partition(&c.pio, PIO_LAST);
        // rules[1] covers the i8042 and cmos entirely (it comes later).
        assert_eq!(at(&c, AddressSpace::Pio, 0x70), ["rules[1]"; 8]);
        assert_eq!(at(&c, AddressSpace::Pio, 0x60), ["rules[1]"; 8]);
        // At 0x80: 1-byte writes are rules[2]'s, the rest rules[1]'s.
        let mut expect = ["rules[1]"; 8];
        expect[4] = "rules[2]";
        assert_eq!(at(&c, AddressSpace::Pio, 0x80), expect);
        assert_eq!(at(&c, AddressSpace::Pio, 0x81), ["rules[1]"; 8]);
        assert_eq!(at(&c, AddressSpace::Pio, 0x3f8), ["device serial0"; 8]);
        assert_eq!(at(&c, AddressSpace::Pio, 0x100), ["default"; 8]);
    }

    #[test]
    fn a_device_rule_before_the_deny_keeps_only_what_is_not_overridden() {
        let spec = AclSpec {
            rules: vec![rule(
                AclTarget::Device("cmos".into()),
                true,
                false,
                ALL_SIZES,
                AclAction::DenyAndLog,
            )],
            ..AclSpec::default()
        };
        let c = compile(&spec, &standard_devices()).unwrap();
        let mut expect = ["rules[0]"; 8];
        for e in &mut expect[4..] {
            *e = "device cmos";
        }
        assert_eq!(at(&c, AddressSpace::Pio, 0x71), expect);
    }

    #[test]
    fn without_own_devices_everything_is_the_default_unless_a_rule_says() {
        let spec = AclSpec {
            own_devices: false,
            default: AclAction::DenyAndLog,
            on_violation: OnViolation::StopVm,
            rules: vec![rule(
                AclTarget::Mmio {
                    first: 0xffff_ffff_ffff_f000,
                    last: u64::MAX,
                },
                true,
                true,
                ALL_SIZES,
                AclAction::Allow,
            )],
            ..AclSpec::default()
        };
        let c = compile(&spec, &standard_devices()).unwrap();
        assert_eq!(c.pio.len(), 1);
        assert_eq!(c.rules.len(), 2, "no implicit device rules");
        assert_partition(&c.mmio, u64::MAX);
        assert_eq!(c.mmio.len(), 2);
        assert_eq!(at(&c, AddressSpace::Mmio, u64::MAX), ["rules[0]"; 8]);
    }

    #[test]
    fn devices_are_resolved_in_both_spaces_and_unknown_ones_refused() {
        let mut devices = standard_devices();
        devices.push(dev(
            AddressSpace::Mmio,
            "balloon0",
            0xd000_0000,
            0xd000_0fff,
        ));
        let spec = AclSpec {
            rules: vec![rule(
                AclTarget::Device("balloon0".into()),
                false,
                true,
                ALL_SIZES,
                AclAction::Deny,
            )],
            ..AclSpec::default()
        };
        let c = compile(&spec, &devices).unwrap();
        let mut expect = ["device balloon0"; 8];
        for e in &mut expect[4..] {
            *e = "rules[0]";
        }
        assert_eq!(at(&c, AddressSpace::Mmio, 0xd000_0010), expect);

        let spec = AclSpec {
            rules: vec![
                rule(
                    AclTarget::Ports { first: 1, last: 1 },
                    true,
                    true,
                    ALL_SIZES,
                    AclAction::Deny,
                ),
                rule(
                    AclTarget::Device("rtc".into()),
                    true,
                    true,
                    ALL_SIZES,
                    AclAction::Deny,
                ),
            ],
            ..AclSpec::default()
        };
        assert_eq!(
            compile(&spec, &devices).unwrap_err().to_string(),
            "acl.rules[1].device: this VM has no device \"rtc\" (it has: i8042, cmos, serial0, balloon0)"
        );
    }
}
