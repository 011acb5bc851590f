//! The `api_ops` target's model of Firecracker API sockets on the control
//! socket (docs/api.md, "`create` with `api_socket`"): a template or a
//! definition gets a socket of mode 0600 at the path it names, only with
//! a valid name no VM or socket of the monitor has, an absolute path in a
//! directory that exists and no file there; `delete` of a name that is no
//! VM closes the socket of a VM never started.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hearth::api::protocol::Request;
use hearth::api::Answer;
use serde_json::{json, Value};

use crate::api_fake::{in_scratch, Call, Fake, Outcome};

/// What the model needs of the monitor before a request.
pub struct Before {
    /// The socket the VM the request names had.
    socket: Option<PathBuf>,
    /// Whether the `api_socket` path was taken.
    existed: bool,
}

/// The name a request's `vm` gives (a template's `name` for `create`).
fn name_of(request: &Request) -> Option<&str> {
    match request {
        Request::Create { vm, .. } => vm.get("name")?.as_str(),
        Request::Delete { vm } => Some(vm),
        _ => None,
    }
}

fn socket_of(fake: &Fake, name: Option<&str>) -> Option<PathBuf> {
    fake.apis.as_ref()?.socket_of(name?)
}

/// Whether the fake may serve the socket `request` names: never one
/// elsewhere on the host (a relative path is refused before it is bound).
pub fn may_bind(request: &Request) -> bool {
    match request {
        Request::Create {
            api_socket: Some(p),
            ..
        } => in_scratch(Path::new(p)) || Path::new(p).is_relative(),
        _ => true,
    }
}

pub fn before(fake: &Fake, request: &Request) -> Before {
    let existed = match request {
        Request::Create {
            api_socket: Some(p),
            ..
        } => std::fs::symlink_metadata(p).is_ok(),
        _ => false,
    };
    Before {
        socket: socket_of(fake, name_of(request)),
        existed,
    }
}

fn valid_name(n: &str) -> bool {
    (1..=32).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `create` with `api_socket` and `delete`, against the model.
pub fn check(
    fake: &Fake,
    before: &Before,
    request: &Request,
    calls: &[Call],
    result: &Result<Answer, String>,
) {
    match request {
        Request::Create {
            vm,
            base_dir,
            api_socket: Some(path),
            ..
        } => check_create(fake, before, vm, base_dir.as_deref(), path, calls, result),
        Request::Delete { vm } if !fake.names.contains(vm) => {
            assert!(calls.is_empty(), "{calls:?} for {request:?}");
            let want = json!({"vm": vm, "state": "deleted"});
            match (&before.socket, result) {
                (Some(_), Ok(Answer::Now(v))) => assert_eq!(v, &want),
                (None, Err(e)) => assert!(e.starts_with("no vm named"), "{e}"),
                (had, got) => panic!("delete {vm} (socket {had:?}) answered {got:?}"),
            }
        }
        _ => {}
    }
}

fn check_create(
    fake: &Fake,
    before: &Before,
    vm: &Value,
    base_dir: Option<&str>,
    path: &str,
    calls: &[Call],
    result: &Result<Answer, String>,
) {
    let name = vm.get("name").and_then(Value::as_str);
    let p = Path::new(path);
    let whole = vm.get("kernel").is_some();
    let free = name.is_some_and(|n| valid_name(n) && !fake.names.iter().any(|v| v == n))
        && before.socket.is_none();
    let may_bind = |p: &Path| p.is_absolute() && in_scratch(p);
    let ok = base_dir.is_none_or(|d| Path::new(d).is_absolute())
        && fake.apis.is_some()
        && may_bind(p)
        && vm.is_object()
        && free
        && !before.existed
        && p.parent().is_some_and(Path::is_dir)
        && (!whole || !matches!(fake.outcome, Outcome::Refused));
    let what = format!("create {vm} on {path}: {result:?}");
    assert_eq!(result.is_ok(), ok, "{what}");
    let socket = socket_of(fake, name);
    if !ok {
        assert_eq!(socket, before.socket, "{what}");
        assert_eq!(
            std::fs::symlink_metadata(p).is_ok(),
            before.existed,
            "{what}"
        );
        return;
    }
    assert_eq!(socket.as_deref(), Some(p), "the socket of {what}");
    let meta = std::fs::symlink_metadata(p).expect("the socket's file");
    assert!(meta.file_type().is_socket(), "{what}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{what}");
    if whole {
        assert!(matches!(calls, [Call::Create { .. }]), "{calls:?}: {what}");
    } else {
        let name = name.expect("a free name");
        let want = json!({"vm": name, "state": "not started", "api_socket": path});
        assert!(calls.is_empty(), "{calls:?}: {what}");
        assert!(matches!(result, Ok(Answer::Now(v)) if *v == want), "{what}");
    }
}
