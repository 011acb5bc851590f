//! A monitor file's `host` section: one sub-section per resource (`cpu`,
//! `memory`, `io`, `net`), the control socket (`api`), system call filters
//! (`seccomp`) and the user the monitor drops to (`sandbox`).

use serde_json::Value;

use super::api::lookup_user;
use super::error::Errors;
use super::parse::{parse_optional, Parsed};
use super::raw::{RawHost, RawHostShare, RawSandbox};
use super::spec::*;
use super::validate::{ranged, HostInfo};

/// Validates a monitor file's `host` section (already parsed); `None` if
/// anything was reported.
pub(crate) fn validate_host(
    host: Parsed<RawHost>,
    info: &HostInfo,
    errors: &mut Errors,
) -> Option<HostSpec> {
    let raw = host.or_default()?;
    let memory = super::memory::validate_host_memory(raw.memory, errors);
    let cpu = super::cpu::validate_host_cpu(raw.cpu, info, errors);
    let api = super::api::validate_api(raw.api, errors);
    let io = validate_host_share(raw.io, "host.io", errors);
    let net = validate_host_share(raw.net, "host.net", errors);
    let sandbox = validate_sandbox(raw.sandbox, errors);
    let cpu = cpu?;
    Some(HostSpec {
        cpus: cpu.cpus,
        sched_tick_ms: cpu.tick_ms,
        scheduler: cpu.scheduler,
        realtime_loop: cpu.realtime,
        api: api?,
        seccomp: raw.seccomp.unwrap_or(true),
        memory: memory?,
        io: io?,
        net: net?,
        sandbox: sandbox?,
    })
}

/// `host.io` or `host.net` (at `path`); `Some(None)` when absent.
fn validate_host_share(
    value: Option<Value>,
    path: &str,
    errors: &mut Errors,
) -> Option<Option<HostShareSpec>> {
    let raw: RawHostShare = match parse_optional(value, path, errors) {
        Parsed::Absent => return Some(None),
        Parsed::Failed => return None,
        Parsed::Ok(raw) => raw,
    };
    if raw.bytes_per_s.is_none() && raw.ops_per_s.is_none() {
        errors.push(
            path,
            "sets no limit: give \"bytes_per_s\", \"ops_per_s\" or both (or leave it out)",
        );
        return None;
    }
    let mut ok = true;
    for (field, value) in [
        ("bytes_per_s", raw.bytes_per_s),
        ("ops_per_s", raw.ops_per_s),
    ] {
        if value == Some(0) {
            errors.push(format!("{path}.{field}"), "0 must be at least 1");
            ok = false;
        }
    }
    let tick = ranged(
        raw.tick_ms,
        DEFAULT_SHARE_TICK_MS,
        MIN_SHARE_TICK_MS..=MAX_SHARE_TICK_MS,
        format!("{path}.tick_ms"),
        errors,
    )?;
    ok.then_some(Some(HostShareSpec {
        bytes_per_s: raw.bytes_per_s,
        ops_per_s: raw.ops_per_s,
        tick_ms: tick,
    }))
}

/// The user the monitor drops to by default: `nobody`.
pub const DEFAULT_SANDBOX_USER: &str = "nobody";

/// The sandbox of user `name` (its uid and primary gid), if the host has it.
pub fn sandbox_user(name: &str) -> Option<SandboxSpec> {
    lookup_user(name).map(|(uid, gid)| SandboxSpec { uid, gid })
}

/// `host.sandbox`: `{}`, `{"user": NAME}` or `{"uid": U, "gid": G}`.
fn validate_sandbox(value: Option<Value>, errors: &mut Errors) -> Option<Option<SandboxSpec>> {
    const FIELD: &str = "host.sandbox";
    let raw: RawSandbox = match parse_optional(value, FIELD, errors) {
        Parsed::Absent => return Some(None),
        Parsed::Failed => return None,
        Parsed::Ok(raw) => raw,
    };
    let spec = match (raw.user, raw.uid, raw.gid) {
        (None, None, None) => sandbox_user(DEFAULT_SANDBOX_USER).or_else(|| {
            let message = format!(
                "{{}} drops to user {DEFAULT_SANDBOX_USER:?}, which this host does not have; \
                 give \"user\", or \"uid\" and \"gid\""
            );
            errors.push(FIELD, message);
            None
        }),
        (Some(user), None, None) => sandbox_user(&user).or_else(|| {
            errors.push(
                format!("{FIELD}.user"),
                format!("no user named {user:?} on this host"),
            );
            None
        }),
        (None, Some(uid), Some(gid)) => {
            let id = |v: u64, field: &str, errors: &mut Errors| match u32::try_from(v) {
                Ok(id) if id != u32::MAX => Some(id),
                _ => {
                    errors.push(format!("{FIELD}.{field}"), format!("{v} is not a valid id"));
                    None
                }
            };
            let uid = id(uid, "uid", errors);
            let gid = id(gid, "gid", errors);
            Some(SandboxSpec {
                uid: uid?,
                gid: gid?,
            })
        }
        _ => {
            errors.push(
                FIELD,
                "give either \"user\", or both \"uid\" and \"gid\" (or nothing, for user \"nobody\")",
            );
            None
        }
    }?;
    if spec.uid == 0 {
        errors.push(
            FIELD,
            "drops to uid 0 (root), which is no sandbox; name an unprivileged user",
        );
        return None;
    }
    Some(Some(spec))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(host: Value) -> Result<HostSpec, Vec<String>> {
        let mut errors = Errors::default();
        let info = HostInfo {
            mem_total_mib: None,
            online_cpus: Some(2),
        };
        let raw = super::super::parse::parse_optional(Some(host), "host", &mut errors);
        let spec = validate_host(raw, &info, &mut errors);
        errors
            .finish(spec)
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn shares_and_sandbox_are_read() {
        let spec = check(json!({
            "io": {"bytes_per_s": 100_000_000, "tick_ms": 20},
            "net": {"ops_per_s": 5000},
            "sandbox": {"uid": 1000, "gid": 100}
        }))
        .expect("valid");
        assert_eq!(
            spec.io,
            Some(HostShareSpec {
                bytes_per_s: Some(100_000_000),
                ops_per_s: None,
                tick_ms: 20
            })
        );
        assert_eq!(
            spec.net.map(|n| (n.ops_per_s, n.tick_ms)),
            Some((Some(5000), 10))
        );
        assert_eq!(
            spec.sandbox,
            Some(SandboxSpec {
                uid: 1000,
                gid: 100
            })
        );
        let nobody = check(json!({"sandbox": {}})).expect("valid").sandbox;
        assert_eq!(nobody, sandbox_user("nobody"));
        assert!(
            nobody.is_some_and(|s| s.uid != 0),
            "this host has a nobody user"
        );
    }

    #[test]
    fn errors_name_path_and_value() {
        let errors = check(json!({
            "io": {"tick_ms": 5},
            "net": {"bytes_per_s": 0, "ops_per_s": 10, "tick_ms": 0},
            "sandbox": {"uid": 0, "gid": 0}
        }))
        .expect_err("invalid");
        assert_eq!(
            errors,
            [
                "host.io: sets no limit: give \"bytes_per_s\", \"ops_per_s\" or both (or leave it out)",
                "host.net.bytes_per_s: 0 must be at least 1",
                "host.net.tick_ms: 0 is out of range (1..=1000)",
                "host.sandbox: drops to uid 0 (root), which is no sandbox; name an unprivileged user",
            ]
        );
        let errors = check(json!({"sandbox": {"user": "no-such-user-here"}})).expect_err("bad");
        assert_eq!(
            errors,
            ["host.sandbox.user: no user named \"no-such-user-here\" on this host"]
        );
        let errors = check(json!({"sandbox": {"user": "nobody", "uid": 5}})).expect_err("bad");
        assert!(
            errors[0].starts_with("host.sandbox: give either \"user\""),
            "{errors:?}"
        );
        let errors = check(json!({"io": {"bytes_per_s": -1}})).expect_err("bad");
        assert_eq!(
            errors,
            ["host.io.bytes_per_s: invalid value: integer -1, expected a non-negative integer"]
        );
    }
}
