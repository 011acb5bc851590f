//! Who may do what: a connection's peer credentials (SO_PEERCRED) checked
//! against the `host.api.acl` entries.

use crate::config::{AclEntry, Grant, Principal};

use super::protocol::Request;

/// The process at the other end of a connection, as the kernel saw it
/// when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Acl {
    entries: Vec<AclEntry>,
}

impl Acl {
    pub fn new(entries: Vec<AclEntry>) -> Self {
        Acl { entries }
    }

    fn matching<'a>(&'a self, peer: &'a Peer) -> impl Iterator<Item = &'a AclEntry> + 'a {
        self.entries.iter().filter(move |e| match e.who {
            Principal::Uid(uid) => uid == peer.uid,
            Principal::Gid(gid) => gid == peer.gid,
        })
    }

    /// Whether any entry names `peer` (checked when it connects).
    pub fn knows(&self, peer: &Peer) -> bool {
        self.matching(peer).next().is_some()
    }

    /// Whether `peer` holds `grant` on `vm` (on the whole monitor for `None`).
    pub fn allows(&self, peer: &Peer, grant: Grant, vm: Option<&str>) -> bool {
        self.matching(peer).any(|e| {
            e.grant >= grant
                && match (vm, &e.vms) {
                    (_, None) => true,
                    (Some(vm), Some(list)) => list.iter().any(|v| v == vm),
                    (None, Some(_)) => false,
                }
        })
    }

    /// Checks a request; `Err` is the message of the refusal. Requests
    /// whose replies are filtered per VM only need the peer to be known.
    pub fn check(&self, peer: &Peer, request: &Request) -> Result<(), String> {
        if self.matching(peer).next().is_none() {
            return Err(format!(
                "permission denied: uid {} (gid {}) is not in the access list",
                peer.uid, peer.gid
            ));
        }
        if request.filtered() {
            return Ok(());
        }
        let (grant, vm) = request.needs();
        if self.allows(peer, grant, vm) {
            return Ok(());
        }
        Err(match vm {
            Some(vm) => format!(
                "permission denied: uid {} has no {} grant for vm {vm}",
                peer.uid,
                grant.name()
            ),
            None => format!(
                "permission denied: uid {} has no {} grant",
                peer.uid,
                grant.name()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl() -> Acl {
        Acl::new(vec![
            AclEntry {
                who: Principal::Uid(0),
                vms: None,
                grant: Grant::Admin,
            },
            AclEntry {
                who: Principal::Uid(1000),
                vms: Some(vec!["web".into()]),
                grant: Grant::Control,
            },
            AclEntry {
                who: Principal::Gid(100),
                vms: None,
                grant: Grant::Read,
            },
        ])
    }

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer { pid: 1, uid, gid }
    }

    #[test]
    fn grants_include_lesser_ones_on_the_vms_named() {
        let acl = acl();
        let alice = peer(1000, 1000);
        let pause = |vm: &str| Request::Pause { vm: vm.into() };
        assert_eq!(acl.check(&alice, &pause("web")), Ok(()));
        assert_eq!(
            acl.check(&alice, &pause("db")),
            Err("permission denied: uid 1000 has no control grant for vm db".into())
        );
        assert!(acl.allows(&alice, Grant::Read, Some("web")));
        assert!(!acl.allows(&alice, Grant::Read, Some("db")));
        assert_eq!(
            acl.check(&alice, &Request::Shutdown {}),
            Err("permission denied: uid 1000 has no admin grant".into())
        );
        assert_eq!(acl.check(&peer(0, 0), &Request::Shutdown {}), Ok(()));
    }

    #[test]
    fn groups_match_the_primary_gid_and_strangers_get_nothing() {
        let acl = acl();
        let staff = peer(2000, 100);
        assert!(acl.allows(&staff, Grant::Read, Some("db")));
        assert!(acl
            .check(&staff, &Request::Stop { vm: "db".into() })
            .is_err());
        assert_eq!(
            acl.check(&peer(65534, 65534), &Request::List {}),
            Err("permission denied: uid 65534 (gid 65534) is not in the access list".into())
        );
    }
}
