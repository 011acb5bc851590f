//! Target `acl`: the ACL compiler (`Verifier::new`) and the check on the
//! exit path (`Verifier::check`, `would_allow`) against a naive model that
//! reads docs/verifier.md literally: for each byte of an access, the last
//! rule in precedence order (the default, the VM's own devices, the user's
//! rules) that matches its kind decides; an access is allowed only if
//! every byte it touches is, else the first refusing byte's rule decides
//! (past the last port, the default).
//!
//! What must hold, for any rules, devices and accesses:
//! - compiling fails exactly when a rule names a device the VM does not
//!   have, naming the first such rule;
//! - every verdict, and what `would_allow` says, is the model's; a
//!   violation stops the VM exactly at the count `on_violation` gives;
//! - every rule's counters are the model's, and the compiled ranges are no
//!   more than the rules' boundaries make.

use arbitrary::Arbitrary;
use hearth::bus::AddressSpace;
use hearth::config::{AclAction, AclRuleSpec, AclSpec, AclTarget, OnViolation, ALL_SIZES};
use hearth::verifier::{CompileError, DeviceRange, Op, Verdict, Verifier, Violation};

use crate::support::{self, List};

const NAMES: [&str; 5] = ["serial0", "cmos", "i8042", "balloon0", "rtc"];
const PIO_LAST: u64 = 0xffff;

/// An address: small (where rules crowd), at an edge of a space, or any.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Addr {
    Low(u8),
    Edge(u8, i8),
    Raw(u64),
}

impl Addr {
    fn value(self, space: AddressSpace) -> u64 {
        let edges: [u64; 4] = match space {
            AddressSpace::Pio => [0, 0x3f8, 0x1_0000, PIO_LAST],
            AddressSpace::Mmio => [0, 0xd000_0000, u64::MAX, 1 << 32],
        };
        match self {
            Addr::Low(n) => u64::from(n),
            Addr::Edge(i, d) => edges[usize::from(i) % 4].wrapping_add_signed(i64::from(d)),
            Addr::Raw(n) => n,
        }
    }
}

fn space(mmio: bool) -> AddressSpace {
    if mmio {
        AddressSpace::Mmio
    } else {
        AddressSpace::Pio
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub struct Dev {
    pub mmio: bool,
    pub name: u8,
    pub first: Addr,
    pub span: u8,
}

#[derive(Debug, Clone, Arbitrary)]
pub enum Target {
    Ports(Addr, u8),
    Mmio(Addr, u8),
    Wide(bool, Addr, Addr),
    Device(u8),
}

#[derive(Debug, Clone, Arbitrary)]
pub struct Rule {
    pub target: Target,
    pub read: bool,
    pub write: bool,
    pub sizes: u8,
    pub action: u8,
}

#[derive(Debug, Clone, Arbitrary)]
pub struct Access {
    pub mmio: bool,
    /// Near the `n`th boundary of the rules (first, last, last + 1), or
    /// any address.
    pub near: Option<(u8, i8)>,
    pub addr: Addr,
    pub len: u8,
    pub write: bool,
}

#[derive(Debug, Clone, Arbitrary)]
pub struct Case {
    pub default: u8,
    pub own_devices: bool,
    pub on_violation: u8,
    pub devices: List<Dev, 6>,
    pub rules: List<Rule, 12>,
    pub accesses: List<Access, 48>,
}

static TALLY: support::Tally<5> =
    support::Tally::new(["cases", "compile errors", "allowed", "denied", "stopped"]);

fn action(n: u8) -> AclAction {
    [AclAction::Allow, AclAction::Deny, AclAction::DenyAndLog][usize::from(n % 3)]
}

fn devices(case: &Case) -> Vec<DeviceRange> {
    case.devices
        .iter()
        .map(|d| {
            let space = space(d.mmio);
            let max = if d.mmio { u64::MAX } else { PIO_LAST };
            let first = d.first.value(space).min(max);
            DeviceRange {
                space,
                name: NAMES[usize::from(d.name) % 4].into(),
                first,
                last: first.saturating_add(u64::from(d.span)).min(max),
            }
        })
        .collect()
}

fn spec(case: &Case) -> AclSpec {
    let range = |sp: AddressSpace, a: Addr, span: u8| {
        let first = a.value(sp);
        (first, first.saturating_add(u64::from(span)))
    };
    let rules = case.rules.iter().map(|r| AclRuleSpec {
        target: match r.target {
            Target::Ports(a, span) => {
                let (first, last) = range(AddressSpace::Pio, a, span);
                AclTarget::Ports { first, last }
            }
            Target::Mmio(a, span) => {
                let (first, last) = range(AddressSpace::Mmio, a, span);
                AclTarget::Mmio { first, last }
            }
            Target::Wide(mmio, a, b) => {
                let (x, y) = (a.value(space(mmio)), b.value(space(mmio)));
                let (first, last) = (x.min(y), x.max(y));
                if mmio {
                    AclTarget::Mmio { first, last }
                } else {
                    AclTarget::Ports { first, last }
                }
            }
            Target::Device(n) => AclTarget::Device(NAMES[usize::from(n) % NAMES.len()].into()),
        },
        read: r.read,
        write: r.write,
        sizes: r.sizes & ALL_SIZES,
        action: action(r.action),
    });
    AclSpec {
        default: action(case.default),
        own_devices: case.own_devices,
        on_violation: match case.on_violation % 4 {
            0 => OnViolation::Ignore,
            1 => OnViolation::Log,
            2 => OnViolation::StopVm,
            n => OnViolation::StopVmAfter(u64::from(case.on_violation / 4 % 5 + n - 2)),
        },
        log_per_second: 1,
        rules: rules.collect(),
    }
}

/// The model: the rules in precedence order, each as the ranges it covers.
struct Model {
    /// (rule index, space, first, last, slot mask) in precedence order.
    placed: Vec<(u16, AddressSpace, u64, u64, u8)>,
    actions: Vec<AclAction>,
    on_violation: OnViolation,
    violations: u64,
    /// Per rule: pio reads, pio writes, mmio reads, mmio writes.
    counters: Vec<[u64; 4]>,
}

/// The access kind: reads 0-3, writes 4-7, by size 1, 2, 4, 8 (a size in
/// between counts as the next larger one).
fn slot(write: bool, len: usize) -> u8 {
    let size = match len {
        0 | 1 => 0,
        2 => 1,
        3 | 4 => 2,
        _ => 3,
    };
    size + if write { 4 } else { 0 }
}

impl Model {
    /// The model of `spec` with `devices`, or the error compiling must give.
    fn new(spec: &AclSpec, devices: &[DeviceRange]) -> Result<Model, String> {
        let mut placed = Vec::new();
        let mut actions = vec![spec.default];
        if spec.own_devices {
            for d in devices {
                actions.push(AclAction::Allow);
                placed.push((actions.len() as u16 - 1, d.space, d.first, d.last, 0xff));
            }
        }
        for (i, r) in spec.rules.iter().enumerate() {
            actions.push(r.action);
            let rule = actions.len() as u16 - 1;
            let mask =
                (if r.read { r.sizes } else { 0 }) | (if r.write { r.sizes << 4 } else { 0 });
            match &r.target {
                AclTarget::Ports { first, last } => {
                    placed.push((rule, AddressSpace::Pio, *first, *last, mask))
                }
                AclTarget::Mmio { first, last } => {
                    placed.push((rule, AddressSpace::Mmio, *first, *last, mask))
                }
                AclTarget::Device(name) => {
                    let found: Vec<_> = devices.iter().filter(|d| d.name == *name).collect();
                    if found.is_empty() {
                        return Err(format!(
                            "acl.rules[{i}].device: this VM has no device {name:?}"
                        ));
                    }
                    placed.extend(found.iter().map(|d| (rule, d.space, d.first, d.last, mask)));
                }
            }
        }
        Ok(Model {
            counters: vec![[0; 4]; actions.len()],
            placed,
            actions,
            on_violation: spec.on_violation,
            violations: 0,
        })
    }

    /// The last rule matching access kind `slot` at one address.
    fn rule_at(&self, space: AddressSpace, addr: u64, slot: u8) -> u16 {
        self.placed
            .iter()
            .rev()
            .find(|(_, s, first, last, mask)| {
                *s == space && *first <= addr && addr <= *last && mask & (1 << slot) != 0
            })
            .map_or(0, |p| p.0)
    }

    /// The rule deciding an access, byte by byte.
    fn decide(&self, space: AddressSpace, addr: u64, len: usize, write: bool) -> u16 {
        let slot = slot(write, len);
        let allow = |rule: u16| self.actions[usize::from(rule)] == AclAction::Allow;
        let first = self.rule_at(space, addr, slot);
        if !allow(first) {
            return first;
        }
        let last = addr.saturating_add((len as u64).saturating_sub(1));
        for byte in addr.saturating_add(1)..=last {
            if space == AddressSpace::Pio && byte > PIO_LAST {
                return if allow(0) { first } else { 0 };
            }
            let rule = self.rule_at(space, byte, slot);
            if !allow(rule) {
                return rule;
            }
        }
        first
    }

    fn check(&mut self, space: AddressSpace, addr: u64, len: usize, write: bool) -> Verdict {
        let rule = self.decide(space, addr, len, write);
        let class = usize::from(space == AddressSpace::Mmio) * 2 + usize::from(write);
        self.counters[usize::from(rule)][class] += 1;
        match self.actions[usize::from(rule)] {
            AclAction::Allow => Verdict::Allow,
            AclAction::Deny => Verdict::Deny,
            AclAction::DenyAndLog => {
                self.violations += 1;
                match self.on_violation.stop_at() {
                    Some(limit) if self.violations >= limit => Verdict::Stop(Violation {
                        count: self.violations,
                        space,
                        addr,
                        len: len.min(255) as u8,
                        op: if write { Op::Write } else { Op::Read },
                        rule,
                    }),
                    _ => Verdict::Deny,
                }
            }
        }
    }
}

/// The address an access is made at.
fn access_addr(a: &Access, model: &Model) -> u64 {
    let space = space(a.mmio);
    let addr = match a.near {
        Some((i, d)) if !model.placed.is_empty() => {
            let p = &model.placed[usize::from(i) % model.placed.len()];
            let edge = [p.2, p.3, p.3.wrapping_add(1)][usize::from(i) % 3];
            edge.wrapping_add_signed(i64::from(d % 10))
        }
        _ => a.addr.value(space),
    };
    // Port numbers are 16 bits (KVM reports nothing else).
    if a.mmio {
        addr
    } else {
        addr & PIO_LAST
    }
}

/// Runs one case; panics when a property fails.
pub fn run(case: &Case) {
    TALLY.add("cases");
    let devices = devices(case);
    let spec = spec(case);
    let (verifier, mut model) = match (
        Verifier::new("fuzz", &spec, &devices),
        Model::new(&spec, &devices),
    ) {
        (Ok(v), Ok(m)) => (v, m),
        (Err(CompileError::UnknownDevice { rule, name, .. }), Err(expected)) => {
            TALLY.add("compile errors");
            let got = format!("acl.{rule}.device: this VM has no device {name:?}");
            assert_eq!(got, expected);
            return;
        }
        (got, expected) => panic!("compiling gave {got:?}, the model {:?}", expected.err()),
    };
    let labels: Vec<&str> = verifier.rules().iter().map(|r| &*r.label).collect();
    assert_eq!(
        labels.len(),
        model.actions.len(),
        "one compiled rule per rule: {labels:?}"
    );
    assert!(verifier
        .rules()
        .iter()
        .zip(&model.actions)
        .all(|(r, a)| r.action == *a));
    let (pio, mmio) = verifier.range_counts();
    let bound = |sp: AddressSpace| 1 + 2 * model.placed.iter().filter(|p| p.1 == sp).count();
    assert!(
        pio <= bound(AddressSpace::Pio) && mmio <= bound(AddressSpace::Mmio),
        "{pio} {mmio}"
    );
    for a in case.accesses.iter() {
        let (space, addr, len) = (
            space(a.mmio),
            access_addr(a, &model),
            usize::from(a.len % 9),
        );
        let op = if a.write { Op::Write } else { Op::Read };
        let expected = model.check(space, addr, len, a.write);
        assert_eq!(
            verifier.would_allow(space, addr, len, op),
            expected == Verdict::Allow
        );
        let got = verifier.check(space, addr, len, op);
        assert_eq!(got, expected, "{len}-byte {space} {op:?} at {addr:#x}");
        TALLY.add(match got {
            Verdict::Allow => "allowed",
            Verdict::Deny => "denied",
            Verdict::Stop(_) => "stopped",
        });
    }
    let counters: Vec<[u64; 4]> = verifier
        .counters()
        .iter()
        .map(|c| [c.pio_reads, c.pio_writes, c.mmio_reads, c.mmio_writes])
        .collect();
    assert_eq!(counters, model.counters, "every rule's counters");
    assert_eq!(verifier.stats().violations, model.violations);
}

#[test]
fn acl() {
    let _heap = support::shared();
    bolero::check!()
        .with_test_time(support::budget(6))
        .with_generator(support::input())
        .for_each(|bytes| support::decode(bytes, run));
    TALLY.report("acl");
}

/// Fixed inputs: accesses that cross ranges and the end of the port space.
mod regressions {
    use super::*;

    fn access(mmio: bool, addr: u64, len: u8, write: bool) -> Access {
        Access {
            mmio,
            near: None,
            addr: Addr::Raw(addr),
            len,
            write,
        }
    }

    /// docs/verifier.md's example: a 4-byte read at 0x3fe runs past the
    /// serial port; a 2-byte read at the last port runs past the space.
    #[test]
    fn accesses_across_a_device_and_past_the_last_port() {
        let _heap = support::shared();
        let serial = Dev {
            mmio: false,
            name: 0,
            first: Addr::Raw(0x3f8),
            span: 7,
        };
        let last = Dev {
            mmio: false,
            name: 2,
            first: Addr::Raw(0xfffe),
            span: 1,
        };
        for default in 0..3 {
            run(&Case {
                default,
                own_devices: true,
                on_violation: 2,
                devices: vec![serial.clone(), last.clone()].into(),
                rules: vec![].into(),
                accesses: vec![
                    access(false, 0x3fe, 4, false),
                    access(false, 0x3f8, 8, true),
                    access(false, 0xffff, 2, false),
                    access(true, u64::MAX, 8, false),
                ]
                .into(),
            });
        }
    }
}
