//! A VM's `acl` section: the device access control list checked by the
//! verifier (`src/verifier/`) on every port-I/O and MMIO exit.
//!
//! Raw serde data, its validation (every problem named by its JSON path,
//! e.g. `vms[0].acl.rules[2].ports: "0x90-0x80" is an empty range`) and the
//! validated [`AclSpec`]. A rule naming a device is checked against the
//! VM's device plan (`devices.rs`) once the VM is validated. See
//! `docs/verifier.md` for the model and `docs/config.md` for the schema.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::Errors;
use super::parse::{parse_section, Parsed};
use super::validate::{ranged, Naming};

/// What a rule (or the default) does with the accesses it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AclAction {
    /// The access reaches the bus (and its device, if any).
    Allow,
    /// Refused quietly: a read returns all ones, a write is dropped; counted.
    Deny,
    /// Refused and counted as a violation: logged (rate-limited) and
    /// subject to `on_violation`.
    DenyAndLog,
}

impl AclAction {
    pub fn name(self) -> &'static str {
        match self {
            AclAction::Allow => "allow",
            AclAction::Deny => "deny",
            AclAction::DenyAndLog => "deny-and-log",
        }
    }
}

/// What happens to the VM on a violation (a `deny-and-log` denial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnViolation {
    /// Counted only: no log line, the VM runs on.
    Ignore,
    /// A log line (rate-limited); the VM runs on.
    Log,
    /// A log line, and the VM stops at the first violation.
    StopVm,
    /// A log line, and the VM stops at its Nth violation (N >= 1).
    StopVmAfter(u64),
}

impl OnViolation {
    /// The JSON form: `"log"`, `"stop-vm-after 100"`.
    pub fn to_config_string(self) -> String {
        match self {
            OnViolation::Ignore => "ignore".into(),
            OnViolation::Log => "log".into(),
            OnViolation::StopVm => "stop-vm".into(),
            OnViolation::StopVmAfter(n) => format!("stop-vm-after {n}"),
        }
    }

    /// The violation count at which the VM stops, if it does.
    pub fn stop_at(self) -> Option<u64> {
        match self {
            OnViolation::StopVm => Some(1),
            OnViolation::StopVmAfter(n) => Some(n),
            OnViolation::Ignore | OnViolation::Log => None,
        }
    }
}

/// What a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclTarget {
    /// Every range a device of this name is registered at (a device of the
    /// VM's plan: `serial0`, `blk0`, ...).
    Device(String),
    /// Ports `first..=last` (at most 0xffff).
    Ports { first: u64, last: u64 },
    /// Guest physical addresses `first..=last`.
    Mmio { first: u64, last: u64 },
}

/// Access sizes as a bit mask: bit 0 = 1 byte, 1 = 2, 2 = 4, 3 = 8 bytes.
pub const ALL_SIZES: u8 = 0b1111;

/// One validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRuleSpec {
    pub target: AclTarget,
    pub read: bool,
    pub write: bool,
    /// Mask of the access sizes it matches (see [`ALL_SIZES`]).
    pub sizes: u8,
    pub action: AclAction,
}

/// A VM's validated access control list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclSpec {
    /// What happens to an access no rule (and no device of the VM) covers.
    pub default: AclAction,
    /// Whether each device the VM was given is implicitly allowed (all
    /// sizes, read and write), below every rule.
    pub own_devices: bool,
    pub on_violation: OnViolation,
    /// At most this many violation log lines per second for the VM.
    pub log_per_second: u32,
    /// In order: a later rule wins over an earlier one where they overlap.
    pub rules: Vec<AclRuleSpec>,
}

/// Default of `acl.log_per_second`, and its largest value.
pub const DEFAULT_LOG_PER_SECOND: u32 = 10;
pub const MAX_LOG_PER_SECOND: u32 = 10_000;
/// Most rules a VM may have (the compiled form indexes them with a u16).
pub const MAX_ACL_RULES: usize = 1024;

impl Default for AclSpec {
    fn default() -> Self {
        AclSpec {
            default: AclAction::Deny,
            own_devices: true,
            on_violation: OnViolation::Log,
            log_per_second: DEFAULT_LOG_PER_SECOND,
            rules: Vec::new(),
        }
    }
}

/// `acl` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcl {
    pub default: Option<AclAction>,
    pub own_devices: Option<bool>,
    pub on_violation: Option<String>,
    pub log_per_second: Option<u64>,
    pub rules: Option<Vec<Value>>,
}

/// One entry of `acl.rules` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub device: Option<String>,
    pub ports: Option<String>,
    pub mmio: Option<String>,
    pub access: Option<Vec<RawAccess>>,
    pub sizes: Option<Vec<u64>>,
    pub action: Option<AclAction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawAccess {
    Read,
    Write,
}

/// Validates the `acl` section; `None` if anything was reported.
pub(crate) fn validate_acl(
    acl: Parsed<RawAcl>,
    naming: &Naming,
    errors: &mut Errors,
) -> Option<AclSpec> {
    let raw = match acl {
        Parsed::Ok(raw) => raw,
        Parsed::Absent => return Some(AclSpec::default()),
        Parsed::Failed => return None,
    };
    let defaults = AclSpec::default();
    let before = errors.len();
    let on_violation = match raw.on_violation {
        None => Some(defaults.on_violation),
        Some(text) => parse_on_violation(&text)
            .map_err(|message| errors.push(naming.at("acl.on_violation"), message))
            .ok(),
    };
    let log_per_second = ranged(
        raw.log_per_second,
        defaults.log_per_second,
        1..=MAX_LOG_PER_SECOND,
        naming.at("acl.log_per_second"),
        errors,
    );
    let values = raw.rules.unwrap_or_default();
    if values.len() > MAX_ACL_RULES {
        errors.push(
            naming.at("acl.rules"),
            format!(
                "has {} rules, more than the {MAX_ACL_RULES} a VM may have",
                values.len()
            ),
        );
    }
    let mut rules = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        let path = naming.at(&format!("acl.rules[{i}]"));
        if let Some(rule) = parse_section::<RawRule>(value, &path, errors) {
            if let Some(rule) = validate_rule(rule, &path, errors) {
                rules.push(rule);
            }
        }
    }
    if errors.len() != before {
        return None;
    }
    Some(AclSpec {
        default: raw.default.unwrap_or(defaults.default),
        own_devices: raw.own_devices.unwrap_or(defaults.own_devices),
        on_violation: on_violation?,
        log_per_second: log_per_second?,
        rules,
    })
}

fn parse_on_violation(text: &str) -> Result<OnViolation, String> {
    let bad = || {
        format!(
            "{text:?} is not one of \"ignore\", \"log\", \"stop-vm\", \"stop-vm-after N\" (N >= 1)"
        )
    };
    match text {
        "ignore" => Ok(OnViolation::Ignore),
        "log" => Ok(OnViolation::Log),
        "stop-vm" => Ok(OnViolation::StopVm),
        _ => {
            let n = text.strip_prefix("stop-vm-after ").ok_or_else(bad)?;
            match parse_number(n.trim()) {
                Some(n) if n >= 1 => Ok(OnViolation::StopVmAfter(n)),
                _ => Err(bad()),
            }
        }
    }
}

fn validate_rule(raw: RawRule, path: &str, errors: &mut Errors) -> Option<AclRuleSpec> {
    let at = |field: &str| format!("{path}.{field}");
    let mut ok = true;
    let target = rule_target(raw.device, raw.ports, raw.mmio, path, errors);
    let (read, write) = match raw.access.as_deref() {
        None => (true, true),
        Some([]) => {
            errors.push(at("access"), "is empty; list \"read\", \"write\" or both");
            ok = false;
            (false, false)
        }
        Some(list) => (
            list.contains(&RawAccess::Read),
            list.contains(&RawAccess::Write),
        ),
    };
    let sizes = match raw.sizes.as_deref() {
        None => ALL_SIZES,
        Some([]) => {
            errors.push(at("sizes"), "is empty; list sizes among 1, 2, 4, 8");
            ok = false;
            0
        }
        Some(list) => {
            let mut mask = 0u8;
            for (j, size) in list.iter().enumerate() {
                match size {
                    1 | 2 | 4 | 8 => mask |= size_bit(*size as usize),
                    other => {
                        errors.push(
                            format!("{path}.sizes[{j}]"),
                            format!("{other} is not an access size (1, 2, 4 or 8)"),
                        );
                        ok = false;
                    }
                }
            }
            mask
        }
    };
    let action = match raw.action {
        Some(action) => Some(action),
        None => {
            errors.push(
                at("action"),
                "required: \"allow\", \"deny\" or \"deny-and-log\"",
            );
            None
        }
    };
    if !ok {
        return None;
    }
    Some(AclRuleSpec {
        target: target?,
        read,
        write,
        sizes,
        action: action?,
    })
}

/// What a rule covers: exactly one of `device`, `ports`, `mmio`.
fn rule_target(
    device: Option<String>,
    ports: Option<String>,
    mmio: Option<String>,
    path: &str,
    errors: &mut Errors,
) -> Option<AclTarget> {
    let at = |field: &str| format!("{path}.{field}");
    let given: Vec<&str> = [
        ("device", device.is_some()),
        ("ports", ports.is_some()),
        ("mmio", mmio.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    match (given.len(), device, ports, mmio) {
        (1, Some(name), _, _) => {
            if is_device_name(&name) {
                Some(AclTarget::Device(name))
            } else {
                errors.push(
                    at("device"),
                    format!("{name:?} is not a device name ([A-Za-z0-9_-]{{1,32}})"),
                );
                None
            }
        }
        (1, _, Some(text), _) => match parse_range(&text, 0xffff) {
            Ok((first, last)) => Some(AclTarget::Ports { first, last }),
            Err(message) => {
                errors.push(at("ports"), message);
                None
            }
        },
        (1, _, _, Some(text)) => match parse_range(&text, u64::MAX) {
            Ok((first, last)) => Some(AclTarget::Mmio { first, last }),
            Err(message) => {
                errors.push(at("mmio"), message);
                None
            }
        },
        (0, ..) => {
            errors.push(
                path,
                "names nothing: give exactly one of \"device\", \"ports\", \"mmio\"",
            );
            None
        }
        _ => {
            errors.push(
                path,
                format!(
                    "gives {}; a rule names exactly one of \"device\", \"ports\", \"mmio\"",
                    given.join(" and ")
                ),
            );
            None
        }
    }
}

/// The bit of an access size in a size mask (0 for a size that is not one).
pub fn size_bit(size: usize) -> u8 {
    match size {
        1 => 1,
        2 => 2,
        4 => 4,
        8 => 8,
        _ => 0,
    }
}

fn is_device_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A number in hex (`0x80`) or decimal (`128`).
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() => u64::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok(),
        None => None,
    }
}

/// `"FIRST-LAST"` (inclusive) or a single `"ADDR"`, each hex or decimal.
fn parse_range(text: &str, max: u64) -> Result<(u64, u64), String> {
    let (a, b) = match text.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let (Some(first), Some(last)) = (parse_number(a), parse_number(b)) else {
        return Err(format!(
            "{text:?} is not a range: write \"FIRST-LAST\" (inclusive) or one address, in hex (0x80) or decimal"
        ));
    };
    if first > last {
        return Err(format!("{text:?} is an empty range"));
    }
    if last > max {
        return Err(format!(
            "{text:?} goes past {max:#x}, the last address here"
        ));
    }
    Ok((first, last))
}

/// The Hearth JSON of an ACL (for `hearth convert`); `None` for the default.
pub(crate) fn acl_to_json(acl: &AclSpec) -> Option<Value> {
    if *acl == AclSpec::default() {
        return None;
    }
    let rules: Vec<Value> = acl.rules.iter().map(rule_to_json).collect();
    Some(json!({
        "default": acl.default.name(),
        "own_devices": acl.own_devices,
        "on_violation": acl.on_violation.to_config_string(),
        "log_per_second": acl.log_per_second,
        "rules": rules,
    }))
}

fn rule_to_json(rule: &AclRuleSpec) -> Value {
    let mut map = Map::new();
    match &rule.target {
        AclTarget::Device(name) => map.insert("device".into(), json!(name)),
        AclTarget::Ports { first, last } => {
            map.insert("ports".into(), json!(format!("{first:#x}-{last:#x}")))
        }
        AclTarget::Mmio { first, last } => {
            map.insert("mmio".into(), json!(format!("{first:#x}-{last:#x}")))
        }
    };
    let mut access = Vec::new();
    if rule.read {
        access.push("read");
    }
    if rule.write {
        access.push("write");
    }
    map.insert("access".into(), json!(access));
    let sizes: Vec<u64> = [1u64, 2, 4, 8]
        .into_iter()
        .filter(|s| rule.sizes & size_bit(*s as usize) != 0)
        .collect();
    map.insert("sizes".into(), json!(sizes));
    map.insert("action".into(), json!(rule.action.name()));
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse::parse_optional;

    fn check(value: Value) -> Result<AclSpec, Vec<String>> {
        let mut errors = Errors::default();
        let naming = Naming::Json("vms[0]".into());
        let parsed: Parsed<RawAcl> = parse_optional(Some(value), "vms[0].acl", &mut errors);
        let spec = validate_acl(parsed, &naming, &mut errors);
        errors
            .finish(spec)
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_full_acl_is_read() {
        let spec = check(json!({
            "default": "deny-and-log",
            "on_violation": "stop-vm-after 100",
            "log_per_second": 5,
            "rules": [
                {"device": "cmos", "access": ["read"], "action": "deny-and-log"},
                {"ports": "0x80-0x80", "access": ["write"], "sizes": [1], "action": "allow"},
                {"mmio": "0xd0000000-0xd0000fff", "action": "deny"},
                {"ports": "0x2f8", "action": "deny"}
            ]
        }))
        .expect("valid");
        assert_eq!(spec.default, AclAction::DenyAndLog);
        assert_eq!(spec.on_violation, OnViolation::StopVmAfter(100));
        assert_eq!(spec.log_per_second, 5);
        assert!(spec.own_devices);
        assert_eq!(
            spec.rules[1],
            AclRuleSpec {
                target: AclTarget::Ports {
                    first: 0x80,
                    last: 0x80
                },
                read: false,
                write: true,
                sizes: 1,
                action: AclAction::Allow,
            }
        );
        assert_eq!(
            spec.rules[2].target,
            AclTarget::Mmio {
                first: 0xd000_0000,
                last: 0xd000_0fff
            }
        );
        assert_eq!(spec.rules[2].sizes, ALL_SIZES);
        assert_eq!(
            spec.rules[3].target,
            AclTarget::Ports {
                first: 0x2f8,
                last: 0x2f8
            }
        );
        // What convert writes back reads the same.
        let back = check(acl_to_json(&spec).expect("not the default")).expect("valid");
        assert_eq!(back, spec);
    }

    #[test]
    fn an_empty_acl_is_the_default() {
        assert_eq!(check(json!({})), Ok(AclSpec::default()));
        assert_eq!(acl_to_json(&AclSpec::default()), None);
    }

    #[test]
    fn bad_rules_are_named_by_their_path() {
        let errors = check(json!({
            "on_violation": "stop-vm-after 0",
            "log_per_second": 0,
            "rules": [
                {"ports": "0x80", "action": "allow"},
                {"device": "cmos", "ports": "0x70", "action": "deny"},
                {"ports": "0x90-0x80", "action": "deny"},
                {"ports": "0x10000", "action": "deny"},
                {"mmio": "zz", "access": [], "sizes": [3], "action": "deny"},
                {"device": "cmos"},
                {"action": "deny"},
                {"device": "cmos", "action": "permit", "acces": ["read"]}
            ]
        }))
        .expect_err("invalid");
        let expected = [
            "vms[0].acl.on_violation: \"stop-vm-after 0\" is not one of \"ignore\", \"log\", \"stop-vm\", \"stop-vm-after N\" (N >= 1)",
            "vms[0].acl.log_per_second: 0 is out of range (1..=10000)",
            "vms[0].acl.rules[1]: gives device and ports; a rule names exactly one of \"device\", \"ports\", \"mmio\"",
            "vms[0].acl.rules[2].ports: \"0x90-0x80\" is an empty range",
            "vms[0].acl.rules[3].ports: \"0x10000\" goes past 0xffff, the last address here",
            "vms[0].acl.rules[4].mmio: \"zz\" is not a range: write \"FIRST-LAST\" (inclusive) or one address, in hex (0x80) or decimal",
            "vms[0].acl.rules[4].access: is empty; list \"read\", \"write\" or both",
            "vms[0].acl.rules[4].sizes[0]: 3 is not an access size (1, 2, 4 or 8)",
            "vms[0].acl.rules[5].action: required: \"allow\", \"deny\" or \"deny-and-log\"",
            "vms[0].acl.rules[6]: names nothing: give exactly one of \"device\", \"ports\", \"mmio\"",
        ];
        for e in expected {
            assert!(errors.iter().any(|l| l == e), "missing {e}\nin {errors:#?}");
        }
        assert!(
            errors
                .iter()
                .any(|l| l.starts_with("vms[0].acl.rules[7]: unknown field \"acces\"")),
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|l| l.starts_with("vms[0].acl.rules[7].action: unknown variant \"permit\"")),
            "{errors:#?}"
        );
    }

    #[test]
    fn numbers_and_ranges() {
        assert_eq!(parse_number("0x3F8"), Some(0x3f8));
        assert_eq!(parse_number("128"), Some(128));
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_range("0x60 - 0x64", 0xffff), Ok((0x60, 0x64)));
        assert_eq!(
            parse_range("0-0xffffffffffffffff", u64::MAX),
            Ok((0, u64::MAX))
        );
    }
}
