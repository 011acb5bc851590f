//! The verifier without KVM: verdicts, counters, accesses across ranges,
//! violations and stopping.

use super::*;
use crate::config::{AclRuleSpec, AclTarget, ALL_SIZES};

use AddressSpace::{Mmio, Pio};

fn devices() -> Vec<DeviceRange> {
    let d = |space, name: &str, first, last| DeviceRange {
        space,
        name: name.into(),
        first,
        last,
    };
    vec![
        d(Pio, "i8042", 0x60, 0x64),
        d(Pio, "cmos", 0x70, 0x71),
        d(Pio, "serial0", 0x3f8, 0x3ff),
        d(Mmio, "balloon0", 0xd000_0000, 0xd000_0fff),
    ]
}

fn ports(
    first: u64,
    last: u64,
    read: bool,
    write: bool,
    sizes: u8,
    action: AclAction,
) -> AclRuleSpec {
    AclRuleSpec {
        target: AclTarget::Ports { first, last },
        read,
        write,
        sizes,
        action,
    }
}

fn probe_acl(on_violation: OnViolation) -> AclSpec {
    AclSpec {
        default: AclAction::DenyAndLog,
        on_violation,
        rules: vec![
            AclRuleSpec {
                target: AclTarget::Device("cmos".into()),
                read: false,
                write: true,
                sizes: ALL_SIZES,
                action: AclAction::DenyAndLog,
            },
            ports(0x80, 0x80, false, true, 1, AclAction::Allow),
            ports(0xcf8, 0xcff, true, true, ALL_SIZES, AclAction::Deny),
        ],
        ..AclSpec::default()
    }
}

#[test]
fn own_devices_pass_and_everything_else_is_refused() {
    let v = Verifier::new("t", &probe_acl(OnViolation::Log), &devices()).unwrap();
    assert_eq!(v.check(Pio, 0x3fd, 1, Op::Read), Verdict::Allow);
    assert_eq!(v.check(Pio, 0x3f8, 1, Op::Write), Verdict::Allow);
    assert_eq!(v.check(Pio, 0x64, 1, Op::Write), Verdict::Allow);
    assert_eq!(v.check(Pio, 0x70, 1, Op::Read), Verdict::Allow);
    assert_eq!(v.check(Pio, 0x71, 1, Op::Write), Verdict::Deny, "rules[0]");
    assert_eq!(v.check(Pio, 0x80, 1, Op::Write), Verdict::Allow, "rules[1]");
    assert_eq!(
        v.check(Pio, 0x80, 2, Op::Write),
        Verdict::Deny,
        "1 byte only"
    );
    assert_eq!(v.check(Pio, 0x80, 1, Op::Read), Verdict::Deny);
    assert_eq!(v.check(Pio, 0xcfc, 4, Op::Read), Verdict::Deny, "quiet");
    assert_eq!(v.check(Mmio, 0xd000_0008, 8, Op::Write), Verdict::Allow);
    assert_eq!(v.check(Mmio, 0xc000_0000, 8, Op::Read), Verdict::Deny);

    let s = v.stats();
    assert_eq!(s.allowed, [2, 3, 0, 1]);
    assert_eq!(s.denied, [2, 2, 1, 0]);
    // Denials by deny-and-log rules: 0x71 write, 0x80 2-byte write, 0x80
    // read, the MMIO read; the 0xcfc read is a quiet deny.
    assert_eq!(s.violations, 4);
    let by_label = |l: &str| s.rules.iter().find(|r| &*r.label == l).unwrap().clone();
    assert_eq!(by_label("default").total(), 3);
    assert_eq!(by_label("default").mmio_reads, 1);
    assert_eq!(by_label("rules[0]").pio_writes, 1);
    assert_eq!(by_label("rules[2]").pio_reads, 1);
    assert_eq!(by_label("device serial0").total(), 2);
    let json = s.to_json();
    assert_eq!(json["denied"]["pio_read"], 2);
    assert_eq!(json["rules"][0]["rule"], "default");
}

#[test]
fn an_access_across_ranges_needs_every_range_to_allow_it() {
    let v = Verifier::new("t", &probe_acl(OnViolation::Log), &devices()).unwrap();
    // 0x3fe..0x401: starts in serial0, ends outside.
    assert_eq!(v.check(Pio, 0x3fe, 4, Op::Read), Verdict::Deny);
    // 0x64..0x65: the i8042's last port and the next.
    assert_eq!(v.check(Pio, 0x64, 2, Op::Read), Verdict::Deny);
    // 0x5f..0x62: starts outside, ends in the i8042.
    assert_eq!(v.check(Pio, 0x5f, 4, Op::Read), Verdict::Deny);
    // Past the last port.
    assert_eq!(v.check(Pio, 0xffff, 2, Op::Read), Verdict::Deny);
    let s = v.stats();
    assert_eq!(s.denied[0], 4);
    assert_eq!(s.allowed[0], 0);

    // Two neighbouring allowed ranges: allowed across them.
    let spec = AclSpec {
        rules: vec![
            ports(0x100, 0x103, true, true, ALL_SIZES, AclAction::Allow),
            ports(0x104, 0x107, true, false, ALL_SIZES, AclAction::Allow),
        ],
        ..AclSpec::default()
    };
    let v = Verifier::new("t", &spec, &[]).unwrap();
    assert_eq!(v.check(Pio, 0x102, 4, Op::Read), Verdict::Allow);
    assert_eq!(v.check(Pio, 0x102, 4, Op::Write), Verdict::Deny);
    assert_eq!(v.check(Pio, 0x106, 4, Op::Read), Verdict::Deny);
}

#[test]
fn stop_vm_after_n_stops_at_the_nth_violation() {
    let v = Verifier::new("t", &probe_acl(OnViolation::StopVmAfter(3)), &devices()).unwrap();
    assert_eq!(v.check(Pio, 0x1234, 1, Op::Read), Verdict::Deny);
    assert_eq!(
        v.check(Pio, 0xcf8, 4, Op::Read),
        Verdict::Deny,
        "not a violation"
    );
    assert_eq!(v.check(Pio, 0x1234, 2, Op::Write), Verdict::Deny);
    let Verdict::Stop(last) = v.check(Mmio, 0xc000_0000, 8, Op::Write) else {
        panic!("the third violation stops the VM");
    };
    assert_eq!(last.count, 3);
    assert_eq!(
        v.describe(&last),
        "8-byte MMIO write at 0xc0000000 denied by default (all)"
    );
    // Every later one asks again (the first stop request wins).
    assert!(matches!(
        v.check(Pio, 0x71, 1, Op::Write),
        Verdict::Stop(Violation { count: 4, .. })
    ));

    let v = Verifier::new("t", &probe_acl(OnViolation::StopVm), &devices()).unwrap();
    assert!(matches!(v.check(Pio, 0x2f8, 1, Op::Read), Verdict::Stop(_)));
}

#[test]
fn the_log_is_rate_limited_and_counts_what_it_left_out() {
    let limiter = LogLimiter::new(3);
    let admitted: Vec<Option<u64>> = (0..10).map(|_| limiter.admit()).collect();
    assert_eq!(&admitted[..3], &[Some(0), Some(0), Some(0)]);
    assert!(admitted[3..].iter().all(Option::is_none));
    assert_eq!(limiter.suppressed.load(Ordering::Relaxed), 7);
    // The next second: one line, saying how many were left out.
    limiter.second.store(u64::MAX, Ordering::Relaxed);
    assert_eq!(limiter.admit(), Some(7));

    let v = Verifier::new(
        "t",
        &AclSpec {
            default: AclAction::DenyAndLog,
            log_per_second: 2,
            ..AclSpec::default()
        },
        &[],
    )
    .unwrap();
    for port in 0..50 {
        v.check(Pio, port, 1, Op::Read);
    }
    let s = v.stats();
    assert_eq!(s.violations, 50);
    // Within one second, 2 lines (48 left out); a slow machine may cross a
    // second boundary once.
    assert!(s.log_suppressed >= 46, "{}", s.log_suppressed);
}

#[test]
fn an_allow_default_lets_everything_through() {
    let spec = AclSpec {
        default: AclAction::Allow,
        own_devices: false,
        ..AclSpec::default()
    };
    let v = Verifier::new("t", &spec, &[]).unwrap();
    assert_eq!(v.check(Pio, 0xffff, 4, Op::Write), Verdict::Allow);
    assert_eq!(v.check(Mmio, u64::MAX, 8, Op::Read), Verdict::Allow);
    assert_eq!(v.range_counts(), (1, 1));
}

#[test]
fn slots_by_size() {
    assert_eq!(slot(Op::Read, 1), 0);
    assert_eq!(slot(Op::Read, 8), 3);
    assert_eq!(slot(Op::Write, 2), 5);
    assert_eq!(slot(Op::Write, 3), 6);
}

#[test]
fn recycled_statistics_take_the_counters_without_allocating() {
    let v = Verifier::new("t", &probe_acl(OnViolation::Log), &devices()).unwrap();
    v.check(Pio, 0x3f8, 1, Op::Write);
    v.check(Pio, 0x71, 1, Op::Write);
    let first = v.stats();
    assert!(first.rules.len() > 3);
    v.check(Pio, 0x80, 1, Op::Write);
    let fresh = v.stats();
    let mut again = None;
    let allocations = crate::test_alloc::allocations_in(|| again = Some(v.stats_into(first)));
    assert_eq!(again, Some(fresh), "the same figures as a fresh read");
    assert_eq!(allocations, 0, "the recycled rules' room is reused");
}
