//! The device access verifier: every port-I/O and MMIO exit is checked
//! against the VM's access control list before the bus dispatches it.
//!
//! The ACL ([`AclSpec`], the `acl` section of a VM) is compiled once, when
//! the VM is built ([`compile`]), into sorted, non-overlapping ranges that
//! cover each address space; each range names, for each kind of access
//! (read or write of 1, 2, 4 or 8 bytes), the rule that decides it. The
//! check on the exit path is a binary search and one relaxed atomic add:
//! no allocation, no lock. A denied read returns all ones, a denied write is
//! dropped. A denial by a `deny-and-log` rule is a *violation*: counted,
//! logged (at most `log_per_second` lines a second per VM, with the number
//! suppressed) and, as `on_violation` says, may stop the VM.
//!
//! See `docs/verifier.md`.

mod compile;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::Value;

use crate::bus::AddressSpace;
use crate::config::{AclAction, AclSpec, OnViolation};

pub use compile::{CompileError, DeviceRange, RuleInfo};
use compile::{Compiled, Range};

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// What to do with an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it reach the bus.
    Allow,
    /// Refuse it (a read returns all ones, a write is dropped).
    Deny,
    /// Refuse it, and stop the VM: `on_violation` says this violation is
    /// one too many.
    Stop(Violation),
}

/// A violation that stops the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// Violations of the VM so far, this one included.
    pub count: u64,
    pub space: AddressSpace,
    pub addr: u64,
    pub len: u8,
    pub op: Op,
    /// Index of the rule that denied it (see [`Verifier::rules`]).
    pub rule: u16,
}

/// Per rule, per kind of access: how many accesses it decided.
#[derive(Debug, Default)]
/// A rule's counters, on a cache line of their own: vCPUs that hit
/// different rules do not bounce each other's lines.
#[repr(align(64))]
struct Counters([AtomicU64; 4]);

fn class(space: AddressSpace, op: Op) -> usize {
    match (space, op) {
        (AddressSpace::Pio, Op::Read) => 0,
        (AddressSpace::Pio, Op::Write) => 1,
        (AddressSpace::Mmio, Op::Read) => 2,
        (AddressSpace::Mmio, Op::Write) => 3,
    }
}

/// A snapshot of one rule's counters (for the stats file and the control
/// socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCounters {
    pub label: std::sync::Arc<str>,
    pub target: std::sync::Arc<str>,
    pub action: AclAction,
    pub pio_reads: u64,
    pub pio_writes: u64,
    pub mmio_reads: u64,
    pub mmio_writes: u64,
}

impl RuleCounters {
    pub fn total(&self) -> u64 {
        self.pio_reads + self.pio_writes + self.mmio_reads + self.mmio_writes
    }
}

/// Per-VM totals of the verifier's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifierStats {
    /// Accesses let through, by class: pio read, pio write, mmio read, mmio write.
    pub allowed: [u64; 4],
    /// Accesses refused, by class.
    pub denied: [u64; 4],
    /// Refusals by `deny-and-log` rules.
    pub violations: u64,
    /// Violation log lines left out by the rate limit.
    pub log_suppressed: u64,
    pub rules: Vec<RuleCounters>,
}

impl VerifierStats {
    pub fn denied_total(&self) -> u64 {
        self.denied.iter().sum()
    }

    /// The `acl` object of a VM in the stats JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Written straight to the statistics file, without a `Value` tree per VM
/// (keys in the order a `Value` would print them).
impl serde::Serialize for VerifierStats {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("acl", 6)?;
        s.serialize_field("allowed", &ByClass::of(&self.allowed))?;
        s.serialize_field("denied", &ByClass::of(&self.denied))?;
        s.serialize_field("denied_total", &self.denied_total())?;
        s.serialize_field("log_suppressed", &self.log_suppressed)?;
        s.serialize_field("rules", &Rules(&self.rules))?;
        s.serialize_field("violations", &self.violations)?;
        s.end()
    }
}

/// Counters by access class.
#[derive(serde::Serialize)]
struct ByClass {
    mmio_read: u64,
    mmio_write: u64,
    pio_read: u64,
    pio_write: u64,
}

impl ByClass {
    /// From `[pio read, pio write, mmio read, mmio write]`.
    fn of(c: &[u64; 4]) -> ByClass {
        ByClass {
            pio_read: c[0],
            pio_write: c[1],
            mmio_read: c[2],
            mmio_write: c[3],
        }
    }
}

struct Rules<'a>(&'a [RuleCounters]);

impl serde::Serialize for Rules<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|r| RuleJson {
            action: r.action.name(),
            mmio_read: r.mmio_reads,
            mmio_write: r.mmio_writes,
            pio_read: r.pio_reads,
            pio_write: r.pio_writes,
            rule: &r.label,
            target: &r.target,
        }))
    }
}

#[derive(serde::Serialize)]
struct RuleJson<'a> {
    action: &'static str,
    mmio_read: u64,
    mmio_write: u64,
    pio_read: u64,
    pio_write: u64,
    rule: &'a str,
    target: &'a str,
}

/// At most `per_second` lines in each whole second since `start`; the rest
/// are counted. Atomics only: a race at a second's boundary lets one line
/// more or fewer through, never blocks.
#[derive(Debug)]
struct LogLimiter {
    per_second: u64,
    start: Instant,
    second: AtomicU64,
    lines: AtomicU64,
    /// Suppressed since the last line that got out.
    pending: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    fn new(per_second: u32) -> Self {
        LogLimiter {
            per_second: u64::from(per_second),
            start: Instant::now(),
            second: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if a line may be written now (`n` were suppressed since
    /// the last one), `None` if this one is suppressed.
    fn admit(&self) -> Option<u64> {
        let now = self.start.elapsed().as_secs();
        let seen = self.second.load(Ordering::Relaxed);
        if now != seen
            && self
                .second
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.lines.store(0, Ordering::Relaxed);
        }
        if self.lines.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.pending.swap(0, Ordering::Relaxed))
        } else {
            self.pending.fetch_add(1, Ordering::Relaxed);
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A VM's compiled ACL with its counters. Immutable but for the atomics,
/// shared by the VM's vCPU threads (and readable by the control socket).
#[derive(Debug)]
pub struct Verifier {
    vm: String,
    rules: Vec<RuleInfo>,
    /// Each rule's action, one byte per rule: what the hot path reads
    /// (the `RuleInfo`s with their labels stay off the exit path's cache lines).
    actions: Vec<AclAction>,
    counters: Vec<Counters>,
    pio: Vec<Range>,
    mmio: Vec<Range>,
    on_violation: OnViolation,
    violations: AtomicU64,
    limiter: LogLimiter,
}

/// The slot of an access: reads 0-3, writes 4-7, by size 1, 2, 4, 8 (a
/// size in between counts as the next larger one).
#[inline]
fn slot(op: Op, len: usize) -> usize {
    let size = match len {
        0 | 1 => 0,
        2 => 1,
        3 | 4 => 2,
        _ => 3,
    };
    match op {
        Op::Read => size,
        Op::Write => 4 + size,
    }
}

impl Verifier {
    /// Compiles `spec` for the VM `vm` with `devices` (every range of its
    /// buses, so a device added later is covered by `own_devices` too).
    pub fn new(vm: &str, spec: &AclSpec, devices: &[DeviceRange]) -> Result<Self, CompileError> {
        let Compiled { rules, pio, mmio } = compile::compile(spec, devices)?;
        Ok(Verifier {
            vm: vm.to_string(),
            counters: rules.iter().map(|_| Counters::default()).collect(),
            actions: rules.iter().map(|r| r.action).collect(),
            rules,
            pio,
            mmio,
            on_violation: spec.on_violation,
            violations: AtomicU64::new(0),
            limiter: LogLimiter::new(spec.log_per_second),
        })
    }

    /// The compiled rules, in precedence order (index 0 is the default).
    pub fn rules(&self) -> &[RuleInfo] {
        &self.rules
    }

    /// Number of compiled ranges: (ports, MMIO).
    pub fn range_counts(&self) -> (usize, usize) {
        (self.pio.len(), self.mmio.len())
    }

    /// The rule deciding an access of `len` bytes at `addr`. An access that
    /// spans ranges is allowed only if every range it touches allows it;
    /// otherwise the first refusing range's rule decides.
    #[inline]
    fn decide(&self, space: AddressSpace, addr: u64, len: usize, op: Op) -> u16 {
        let ranges = match space {
            AddressSpace::Pio => &self.pio,
            AddressSpace::Mmio => &self.mmio,
        };
        let slot = slot(op, len);
        let last = addr.saturating_add((len as u64).saturating_sub(1));
        let mut idx = ranges
            .partition_point(|r| r.first <= addr)
            .saturating_sub(1);
        let Some(first) = ranges.get(idx) else {
            return 0;
        };
        let rule = first.rules[slot];
        if last <= first.last || self.rule_action(rule) != AclAction::Allow {
            return rule;
        }
        // Rare: an allowed access that crosses into the next range(s), or
        // past the end of the port space (where the default decides).
        loop {
            idx += 1;
            let Some(next) = ranges.get(idx) else {
                return if self.rule_action(0) == AclAction::Allow {
                    rule
                } else {
                    0
                };
            };
            let next_rule = next.rules[slot];
            if self.rule_action(next_rule) != AclAction::Allow {
                return next_rule;
            }
            if last <= next.last {
                return rule;
            }
        }
    }

    #[inline]
    fn rule_action(&self, rule: u16) -> AclAction {
        self.actions
            .get(usize::from(rule))
            .copied()
            .unwrap_or(AclAction::Deny)
    }

    /// Whether an access would be allowed, without counting it (the
    /// builder asks this before letting KVM serve a doorbell with an
    /// ioeventfd, which never reaches [`Verifier::check`]).
    pub fn would_allow(&self, space: AddressSpace, addr: u64, len: usize, op: Op) -> bool {
        self.rule_action(self.decide(space, addr, len, op)) == AclAction::Allow
    }

    /// Checks one access. The hot path: a binary search over the compiled
    /// ranges and a relaxed atomic add; a violation also takes the rate
    /// limiter's atomics and, when admitted, writes a log line.
    #[inline]
    pub fn check(&self, space: AddressSpace, addr: u64, len: usize, op: Op) -> Verdict {
        let rule = self.decide(space, addr, len, op);
        if let Some(c) = self.counters.get(usize::from(rule)) {
            c.0[class(space, op)].fetch_add(1, Ordering::Relaxed);
        }
        match self.rule_action(rule) {
            AclAction::Allow => Verdict::Allow,
            AclAction::Deny => Verdict::Deny,
            AclAction::DenyAndLog => self.violation(space, addr, len, op, rule),
        }
    }

    #[cold]
    fn violation(&self, space: AddressSpace, addr: u64, len: usize, op: Op, rule: u16) -> Verdict {
        let count = self.violations.fetch_add(1, Ordering::Relaxed) + 1;
        let v = Violation {
            count,
            space,
            addr,
            len: len.min(usize::from(u8::MAX)) as u8,
            op,
            rule,
        };
        if self.on_violation != OnViolation::Ignore {
            if let Some(suppressed) = self.limiter.admit() {
                let more = if suppressed > 0 {
                    format!(" ({suppressed} more suppressed)")
                } else {
                    String::new()
                };
                log::warn!(
                    "{}: access violation #{count}: {}{more}",
                    self.vm,
                    self.describe(&v)
                );
            }
        }
        match self.on_violation.stop_at() {
            Some(limit) if count >= limit => Verdict::Stop(v),
            _ => Verdict::Deny,
        }
    }

    /// `1-byte port write at 0x80 denied by rules[1] (ports 0x80-0x80)`.
    pub fn describe(&self, v: &Violation) -> String {
        let op = match v.op {
            Op::Read => "read",
            Op::Write => "write",
        };
        let (label, target) = self
            .rules
            .get(usize::from(v.rule))
            .map_or(("?", "?"), |r| (&*r.label, &*r.target));
        format!(
            "{}-byte {} {op} at {:#x} denied by {label} ({target})",
            v.len, v.space, v.addr
        )
    }

    /// Every rule's counters, in precedence order.
    pub fn counters(&self) -> Vec<RuleCounters> {
        let mut rules = Vec::with_capacity(self.rules.len());
        self.counters_into(&mut rules);
        rules
    }

    /// Every rule's counters into `rules` (cleared first; its room is
    /// reused, so a recycled vector takes them without allocating).
    fn counters_into(&self, rules: &mut Vec<RuleCounters>) {
        rules.clear();
        rules.extend(self.rules.iter().zip(&self.counters).map(|(info, c)| {
            let get = |i: usize| c.0[i].load(Ordering::Relaxed);
            RuleCounters {
                label: info.label.clone(),
                target: info.target.clone(),
                action: info.action,
                pio_reads: get(0),
                pio_writes: get(1),
                mmio_reads: get(2),
                mmio_writes: get(3),
            }
        }));
    }

    /// The totals and every rule's counters.
    pub fn stats(&self) -> VerifierStats {
        self.stats_into(VerifierStats::default())
    }

    /// [`Verifier::stats`] in `old`'s room: a recycled `VerifierStats`
    /// (the statistics snapshot's of a second ago) takes the figures
    /// without allocating.
    pub fn stats_into(&self, old: VerifierStats) -> VerifierStats {
        let mut rules = old.rules;
        self.counters_into(&mut rules);
        let mut stats = VerifierStats {
            violations: self.violations.load(Ordering::Relaxed),
            log_suppressed: self.limiter.suppressed.load(Ordering::Relaxed),
            ..VerifierStats::default()
        };
        for r in &rules {
            let into = if r.action == AclAction::Allow {
                &mut stats.allowed
            } else {
                &mut stats.denied
            };
            for (total, n) in
                into.iter_mut()
                    .zip([r.pio_reads, r.pio_writes, r.mmio_reads, r.mmio_writes])
            {
                *total += n;
            }
        }
        stats.rules = rules;
        stats
    }
}

#[cfg(test)]
mod tests;
