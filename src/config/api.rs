//! `host.api`: the control socket (where it lives, its mode) and its access
//! control list (who may do what to which VM). User and group names are
//! resolved to ids here, so the monitor compares numbers only.

use std::ffi::CString;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::Errors;
use super::net::MAX_SOCKET_PATH;
use super::parse::{describe, parse_optional, parse_section, Parsed};
use super::spec::{AclEntry, ApiSpec, Grant, Principal, VmSpec, DEFAULT_API_MODE};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    pub socket: Option<PathBuf>,
    /// Octal permission bits as a string, e.g. "0600".
    pub mode: Option<String>,
    pub acl: Option<Vec<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAclEntry {
    pub uid: Option<u64>,
    pub user: Option<String>,
    pub gid: Option<u64>,
    pub group: Option<String>,
    pub vms: Option<Vec<String>>,
    pub grant: Option<RawGrant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawGrant {
    Read,
    Control,
    Admin,
}

impl From<RawGrant> for Grant {
    fn from(g: RawGrant) -> Grant {
        match g {
            RawGrant::Read => Grant::Read,
            RawGrant::Control => Grant::Control,
            RawGrant::Admin => Grant::Admin,
        }
    }
}

/// The monitor's own effective uid (the default ACL's admin).
pub fn own_uid() -> u32 {
    // SAFETY: geteuid has no failure mode and no memory effects.
    unsafe { libc::geteuid() }
}

/// Validates `host.api` (still a JSON value). `Some(None)` when absent.
pub(crate) fn validate_api(value: Option<Value>, errors: &mut Errors) -> Option<Option<ApiSpec>> {
    let raw: RawApi = match parse_optional(value, "host.api", errors) {
        Parsed::Absent => return Some(None),
        Parsed::Failed => return None,
        Parsed::Ok(raw) => raw,
    };
    let socket = check_socket(raw.socket, errors);
    let mode = match raw.mode {
        None => Some(DEFAULT_API_MODE),
        Some(text) => match u32::from_str_radix(&text, 8) {
            Ok(m) if m <= 0o777 && !text.is_empty() => Some(m),
            _ => {
                errors.push(
                    "host.api.mode",
                    format!("{text:?} is not octal permission bits (\"0600\" .. \"0777\")"),
                );
                None
            }
        },
    };
    let acl = match raw.acl {
        None => Some(ApiSpec::owner_only(PathBuf::new(), own_uid()).acl),
        Some(entries) => {
            let checked: Vec<Option<AclEntry>> = entries
                .into_iter()
                .enumerate()
                .map(|(i, v)| check_entry(v, &format!("host.api.acl[{i}]"), errors))
                .collect();
            checked.into_iter().collect()
        }
    };
    Some(Some(ApiSpec {
        socket: socket?,
        mode: mode?,
        acl: acl?,
    }))
}

fn check_socket(socket: Option<PathBuf>, errors: &mut Errors) -> Option<PathBuf> {
    const FIELD: &str = "host.api.socket";
    let Some(path) = socket else {
        errors.push(FIELD, "required: the path of the control socket");
        return None;
    };
    if !path.is_absolute() {
        errors.push(FIELD, format!("{path:?} must be an absolute path"));
        return None;
    }
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        errors.push(
            FIELD,
            format!("{path:?} is {len} bytes, longer than a Unix socket path may be ({MAX_SOCKET_PATH})"),
        );
        return None;
    }
    match path.parent() {
        Some(dir) if !dir.is_dir() => {
            errors.push(
                FIELD,
                format!("directory {dir:?} does not exist (needed for {path:?})"),
            );
            None
        }
        _ => Some(path),
    }
}

fn check_entry(value: Value, path: &str, errors: &mut Errors) -> Option<AclEntry> {
    if !value.is_object() {
        errors.push(
            path,
            format!(
                "expected an object (an ACL entry), found {}",
                describe(&value)
            ),
        );
        return None;
    }
    let raw: RawAclEntry = parse_section(value, path, errors)?;
    let given = [
        raw.uid.is_some(),
        raw.user.is_some(),
        raw.gid.is_some(),
        raw.group.is_some(),
    ];
    let who = match given.iter().filter(|g| **g).count() {
        1 => principal(&raw, path, errors),
        0 => {
            errors.push(
                path,
                "names nobody: give one of \"uid\", \"user\", \"gid\", \"group\"",
            );
            None
        }
        _ => {
            errors.push(
                path,
                "names more than one of \"uid\", \"user\", \"gid\", \"group\"; use one entry for each",
            );
            None
        }
    };
    let grant = match raw.grant {
        Some(g) => Some(Grant::from(g)),
        None => {
            errors.push(
                format!("{path}.grant"),
                "required: \"read\", \"control\" or \"admin\"",
            );
            None
        }
    };
    let vms = match (raw.vms, grant) {
        (Some(_), Some(Grant::Admin)) => {
            errors.push(
                format!("{path}.vms"),
                "an \"admin\" grant covers the whole monitor; use \"control\" to limit it to some VMs",
            );
            None
        }
        (Some(list), _) if list.is_empty() => {
            errors.push(
                format!("{path}.vms"),
                "is empty; leave it out to cover every VM",
            );
            None
        }
        (vms, _) => Some(vms),
    };
    Some(AclEntry {
        who: who?,
        vms: vms?,
        grant: grant?,
    })
}

fn principal(raw: &RawAclEntry, path: &str, errors: &mut Errors) -> Option<Principal> {
    let id = |v: u64, field: &str, errors: &mut Errors| match u32::try_from(v) {
        Ok(id) if id != u32::MAX => Some(id),
        _ => {
            errors.push(format!("{path}.{field}"), format!("{v} is not a valid id"));
            None
        }
    };
    if let Some(uid) = raw.uid {
        return id(uid, "uid", errors).map(Principal::Uid);
    }
    if let Some(gid) = raw.gid {
        return id(gid, "gid", errors).map(Principal::Gid);
    }
    if let Some(user) = &raw.user {
        let found = lookup_user(user).map(|(uid, _)| uid);
        if found.is_none() {
            errors.push(
                format!("{path}.user"),
                format!("no user named {user:?} on this host"),
            );
        }
        return found.map(Principal::Uid);
    }
    let group = raw.group.as_deref().unwrap_or_default();
    let found = lookup_group(group);
    if found.is_none() {
        errors.push(
            format!("{path}.group"),
            format!("no group named {group:?} on this host"),
        );
    }
    found.map(Principal::Gid)
}

/// The uid and primary gid of user `name` (getpwnam_r).
pub(crate) fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: zeroed passwd is a valid (all-null) value to be filled in.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, `buf` for its length;
    // getpwnam_r writes only into `pwd`, `buf` and `result`.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
}

/// The gid of group `name` (getgrnam_r).
fn lookup_group(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: zeroed group is a valid (all-null) value to be filled in.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as for getpwnam_r above.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}

/// Checks that every VM an ACL entry names is a VM of the file.
pub(crate) fn check_acl_vms(api: Option<&ApiSpec>, vms: &[VmSpec], errors: &mut Errors) {
    let Some(api) = api else { return };
    for (i, entry) in api.acl.iter().enumerate() {
        for (j, name) in entry.vms.iter().flatten().enumerate() {
            if !vms.iter().any(|vm| &vm.name == name) {
                let known: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
                errors.push(
                    format!("host.api.acl[{i}].vms[{j}]"),
                    format!(
                        "{name:?} is not a VM of this file (its VMs: {})",
                        known.join(", ")
                    ),
                );
            }
        }
    }
}

/// `host.api` back as JSON (for `hearth convert`); names become ids.
pub(crate) fn api_to_json(api: &ApiSpec) -> Value {
    let acl: Vec<Value> = api
        .acl
        .iter()
        .map(|e| {
            let mut v = match e.who {
                Principal::Uid(uid) => json!({ "uid": uid }),
                Principal::Gid(gid) => json!({ "gid": gid }),
            };
            v["grant"] = json!(e.grant.name());
            if let Some(vms) = &e.vms {
                v["vms"] = json!(vms);
            }
            v
        })
        .collect();
    json!({
        "socket": api.socket.to_string_lossy(),
        "mode": format!("{:04o}", api.mode),
        "acl": acl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: Value) -> (Option<Option<ApiSpec>>, Vec<String>) {
        let mut errors = Errors::default();
        let spec = validate_api(Some(value), &mut errors);
        let lines = match errors.finish(Some(())) {
            Err(e) => e.iter().map(ToString::to_string).collect(),
            Ok(()) => Vec::new(),
        };
        (spec, lines)
    }

    #[test]
    fn defaults_give_the_owner_admin_and_mode_0600() {
        let (spec, lines) = check(json!({"socket": "/tmp/h.sock"}));
        assert!(lines.is_empty(), "{lines:?}");
        let spec = spec.flatten().expect("valid");
        assert_eq!(spec.mode, 0o600);
        assert_eq!(spec.acl, ApiSpec::owner_only(PathBuf::new(), own_uid()).acl);
    }

    #[test]
    fn entries_resolve_names_and_keep_vms() {
        let (spec, lines) = check(json!({
            "socket": "/tmp/h.sock", "mode": "0666",
            "acl": [{"uid": 0, "grant": "admin"}, {"user": "root", "vms": ["web"], "grant": "control"},
                    {"group": "root", "grant": "read"}, {"gid": 100, "grant": "read"}]
        }));
        assert!(lines.is_empty(), "{lines:?}");
        let spec = spec.flatten().expect("valid");
        assert_eq!(spec.mode, 0o666);
        assert_eq!(spec.acl[1].who, Principal::Uid(0));
        assert_eq!(spec.acl[1].vms, Some(vec!["web".to_string()]));
        assert_eq!(spec.acl[2].who, Principal::Gid(0));
        assert_eq!(spec.acl[3].grant, Grant::Read);
    }

    #[test]
    fn errors_name_path_and_value() {
        let (spec, lines) = check(json!({
            "socket": "rel.sock", "mode": "0999",
            "acl": [{"grant": "read"}, {"uid": 1, "gid": 2, "grant": "read"},
                    {"user": "no-such-user-here", "grant": "control"},
                    {"uid": 5, "grant": "owner"}, {"uid": 5, "vms": ["a"], "grant": "admin"},
                    {"uid": 6, "vms": [], "grant": "read"}, 7]
        }));
        assert!(spec.is_none());
        let expected = [
            "host.api.socket: \"rel.sock\" must be an absolute path",
            "host.api.mode: \"0999\" is not octal permission bits (\"0600\" .. \"0777\")",
            "host.api.acl[0]: names nobody: give one of \"uid\", \"user\", \"gid\", \"group\"",
            "host.api.acl[1]: names more than one of \"uid\", \"user\", \"gid\", \"group\"; use one entry for each",
            "host.api.acl[2].user: no user named \"no-such-user-here\" on this host",
            "host.api.acl[3].grant: unknown variant \"owner\", expected one of \"read\", \"control\", \"admin\"",
            "host.api.acl[4].vms: an \"admin\" grant covers the whole monitor; use \"control\" to limit it to some VMs",
            "host.api.acl[5].vms: is empty; leave it out to cover every VM",
            "host.api.acl[6]: expected an object (an ACL entry), found number 7",
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn a_missing_socket_directory_is_reported() {
        let (_, lines) = check(json!({"socket": "/nope/dir/h.sock"}));
        assert_eq!(
            lines,
            ["host.api.socket: directory \"/nope/dir\" does not exist (needed for \"/nope/dir/h.sock\")"]
        );
    }
}
