//! A VM's network devices: `net` (virtio-net interfaces on host taps, and
//! the VM's share of `host.net`) and `vsock` (Firecracker's hybrid vsock:
//! a Unix socket on the host).

use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::block::{check_count, check_id, validate_rate_limiter, validate_share};
use super::claims::Claims;
use super::error::Errors;
use super::parse::Parsed;
use super::raw::{RawInterface, RawNet, RawVsock};
use super::spec::*;
use super::validate::{ranged, resolve_path, show, Naming};

/// `sun_path` holds 108 bytes, the terminating NUL included.
pub(crate) const MAX_SOCKET_PATH: usize = 107;
/// Longest interface name (IFNAMSIZ less the NUL).
const MAX_IFNAME: usize = 15;

/// Validates `net`: the interfaces, and the VM's share of `host.net`.
/// `vm` is the VM's name (for derived MACs), `None` if it was invalid;
/// `net_dir` is where the host's interfaces are listed (`/sys/class/net`).
pub(crate) fn validate_net(
    net: Parsed<RawNet>,
    vm: Option<&str>,
    naming: &Naming,
    net_dir: &Path,
    claims: &mut Claims,
    errors: &mut Errors,
) -> Option<(Vec<NetSpec>, ShareSpec)> {
    let raw = net.or_default()?;
    let share = validate_share(raw.weight, "net.weight", naming, errors);
    let list = raw.list;
    let interfaces = check_count(raw.interfaces, list, naming, errors)?;
    let mut ids = HashMap::new();
    let mut specs = Vec::with_capacity(interfaces.len());
    let before = errors.len();
    for (i, raw) in interfaces.into_iter().enumerate() {
        let at = |field: &str| naming.at(&format!("{list}[{i}].{field}"));
        let id = check_id(raw.id.clone(), list, i, &mut ids, naming, errors);
        let tap = check_tap(raw.tap.clone(), at("tap"), net_dir, claims, errors);
        let mac = check_mac(&raw, vm.zip(id.as_deref()), &at, claims, errors);
        let mtu = raw
            .mtu
            .map(|mtu| ranged(Some(mtu), 0, 68..=u16::MAX, at("mtu"), errors));
        let rx = validate_rate_limiter(raw.rx_rate_limiter, &at("rx_rate_limiter"), errors);
        let tx = validate_rate_limiter(raw.tx_rate_limiter, &at("tx_rate_limiter"), errors);
        if let (Some(id), Some(tap), Some(mac), Some(mtu), Some(rx), Some(tx)) = (
            id,
            tap,
            mac,
            mtu.map_or(Some(None), |m| m.map(Some)),
            rx,
            tx,
        ) {
            specs.push(NetSpec {
                id,
                tap,
                mac,
                mtu,
                rx_rate_limiter: rx,
                tx_rate_limiter: tx,
            });
        }
    }
    (errors.len() == before).then_some((specs, share?))
}

/// `tap`: a host interface name that exists, used by one interface only.
fn check_tap(
    tap: Option<String>,
    field: String,
    net_dir: &Path,
    claims: &mut Claims,
    errors: &mut Errors,
) -> Option<String> {
    let Some(tap) = tap else {
        errors.push(field, "required: the host tap device's name");
        return None;
    };
    let well_formed = (1..=MAX_IFNAME).contains(&tap.len())
        && tap != "."
        && tap != ".."
        && tap.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if !well_formed {
        errors.push(
            field,
            format!(
                "{tap:?} is not an interface name (1 to {MAX_IFNAME} visible characters, no '/')"
            ),
        );
        return None;
    }
    let listed = net_dir.join(&tap);
    if !listed.exists() {
        errors.push(
            field,
            format!(
                "{tap:?} does not exist ({listed:?} is missing); create the tap first, \
                 e.g. `ip tuntap add {tap} mode tap`"
            ),
        );
        return None;
    }
    if let Err(holder) = claims.tap(&tap, field.clone()) {
        errors.push(field, format!("{tap:?} is already used by {holder}"));
        return None;
    }
    Some(tap)
}

/// The interface's MAC: as given (unicast, not all zeros) or derived from
/// `(vm, id)`; claimed so that no two interfaces of the monitor share one.
fn check_mac(
    raw: &RawInterface,
    derive_from: Option<(&str, &str)>,
    at: &dyn Fn(&str) -> String,
    claims: &mut Claims,
    errors: &mut Errors,
) -> Option<[u8; 6]> {
    let field = at("mac");
    let (mac, by) = match (&raw.mac, derive_from) {
        (Some(text), _) => {
            let mac = match parse_mac(text) {
                Ok(mac) => mac,
                Err(problem) => {
                    errors.push(field, format!("{text:?} {problem}"));
                    return None;
                }
            };
            (mac, field.clone())
        }
        (None, Some((vm, id))) => (derived_mac(vm, id), format!("{field} (derived)")),
        (None, None) => return None,
    };
    if let Err(holder) = claims.mac(mac, by) {
        let what = match raw.mac {
            Some(_) => format!("{:?}", format_mac(mac)),
            None => format!(
                "the derived MAC {}; give this interface a \"mac\";",
                format_mac(mac)
            ),
        };
        errors.push(field, format!("{what} is already used by {holder}"));
        return None;
    }
    Some(mac)
}

/// `aa:bb:cc:dd:ee:ff` (either case): a unicast address, not all zeros.
pub(crate) fn parse_mac(text: &str) -> Result<[u8; 6], &'static str> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2);
        *byte = part
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or("is not a MAC address (six hex pairs: \"02:00:00:00:00:01\")")?;
    }
    if parts.next().is_some() || text.contains('+') {
        return Err("is not a MAC address (six hex pairs: \"02:00:00:00:00:01\")");
    }
    if mac[0] & 1 != 0 {
        return Err("is a multicast address; a guest's MAC must be unicast (first byte even)");
    }
    if mac == [0; 6] {
        return Err("is all zeros, which is not a usable address");
    }
    Ok(mac)
}

pub(crate) fn format_mac(mac: [u8; 6]) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// A MAC from the VM name and interface id: `02` (locally administered,
/// unicast) and five bytes of their FNV-1a hash, the same on every run.
pub(crate) fn derived_mac(vm: &str, id: &str) -> [u8; 6] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in vm.bytes().chain([0]).chain(id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let h = hash.to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// Validates `vsock`.
pub(crate) fn validate_vsock(
    vsock: Parsed<RawVsock>,
    naming: &Naming,
    base_dir: &Path,
    claims: &mut Claims,
    errors: &mut Errors,
) -> Option<Option<VsockSpec>> {
    let raw = match vsock {
        Parsed::Absent => return Some(None),
        Parsed::Failed => return None,
        Parsed::Ok(raw) => raw,
    };
    let cid_field = naming.at("vsock.guest_cid");
    let cid = match raw.guest_cid {
        None => {
            errors.push(
                cid_field.clone(),
                "required: the guest's context id (3 or more)",
            );
            None
        }
        Some(cid) => ranged(
            Some(cid),
            0,
            MIN_GUEST_CID..=MAX_GUEST_CID,
            cid_field.clone(),
            errors,
        ),
    };
    let cid = cid.and_then(|cid| match claims.cid(cid, cid_field.clone()) {
        Ok(()) => Some(cid),
        Err(holder) => {
            errors.push(cid_field, format!("{cid} is already used by {holder}"));
            None
        }
    });
    let uds = check_socket_path(
        raw.uds_path,
        naming.at("vsock.uds_path"),
        base_dir,
        claims,
        errors,
    );
    Some(Some(VsockSpec {
        guest_cid: cid?,
        uds_path: uds?,
    }))
}

/// `uds_path`: short enough for `sun_path`, in an existing directory, not an
/// existing file other than a socket, and used by one VM only.
fn check_socket_path(
    given: Option<PathBuf>,
    field: String,
    base_dir: &Path,
    claims: &mut Claims,
    errors: &mut Errors,
) -> Option<PathBuf> {
    let Some(given) = given else {
        errors.push(field, "required: the host-side Unix socket's path");
        return None;
    };
    let path = resolve_path(&given, base_dir, field.clone(), errors)?;
    let shown = show(&given, &path);
    let len = path.as_os_str().len();
    let dir = path.parent().unwrap_or(Path::new("/"));
    let problem = match std::fs::symlink_metadata(&path) {
        _ if len > MAX_SOCKET_PATH => Some(format!(
            "is {len} bytes, longer than a Unix socket path may be ({MAX_SOCKET_PATH})"
        )),
        _ if !dir.is_dir() => Some(format!("needs directory {dir:?}, which does not exist")),
        Ok(m) if !m.file_type().is_socket() => {
            Some("exists and is not a socket (it would be replaced)".to_string())
        }
        _ => None,
    };
    if let Some(problem) = problem {
        errors.push(field, format!("{shown} {problem}"));
        return None;
    }
    if let Err(holder) = claims.socket(&path, field.clone()) {
        errors.push(field, format!("{shown} is already used by {holder}"));
        return None;
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(parse_mac("06:00:AC:10:00:02"), Ok([6, 0, 0xac, 0x10, 0, 2]));
        assert_eq!(format_mac([6, 0, 0xac, 0x10, 0, 2]), "06:00:ac:10:00:02");
        for bad in [
            "06:00:AC:10:00",
            "06:00:AC:10:00:02:03",
            "6:00:AC:10:00:02",
            "0g:00:00:00:00:01",
            "+6:00:00:00:00:01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        assert!(parse_mac("01:00:5e:00:00:01")
            .expect_err("multicast")
            .contains("multicast"));
        assert!(parse_mac("00:00:00:00:00:00")
            .expect_err("zero")
            .contains("zeros"));
    }

    #[test]
    fn derived_macs_are_stable_local_unicast_and_distinct() {
        // Pinned: a guest's MAC must not change with Hearth's version.
        assert_eq!(format_mac(derived_mac("vm0", "eth0")), "02:61:b7:fb:c0:7c");
        let a = derived_mac("web", "eth0");
        assert_eq!(a, derived_mac("web", "eth0"));
        assert_eq!(a[0], 0x02);
        assert_ne!(a, derived_mac("web", "eth1"));
        assert_ne!(a, derived_mac("we", "beth0"));
        assert!(parse_mac(&format_mac(a)).is_ok());
    }
}
