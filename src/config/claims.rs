//! What no two places of one monitor may share: vsock CIDs and sockets,
//! MACs, tap devices, and disk files attached writable. Validation claims
//! each as it goes, over every VM of a file, or against the VMs a running
//! monitor already has (see `parse_vm_for_monitor`).

use std::collections::hash_map::{Entry, HashMap};
use std::hash::Hash;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::spec::VmSpec;

/// A file by identity: (device, inode), so two paths to one file are one.
pub(crate) type FileId = (u64, u64);

/// Who holds what; each value says where, for messages
/// (`vms[0].vsock.guest_cid`, or `VM "web"` for a running VM).
#[derive(Debug, Default)]
pub(crate) struct Claims {
    cids: HashMap<u32, String>,
    sockets: HashMap<PathBuf, String>,
    macs: HashMap<[u8; 6], String>,
    taps: HashMap<String, String>,
    /// The first place a file is attached, and whether writable.
    files: HashMap<FileId, (String, bool)>,
}

/// Records `key` for `by`; `Err(holder)` if another place holds it.
fn take<K: Hash + Eq>(map: &mut HashMap<K, String>, key: K, by: String) -> Result<(), String> {
    match map.entry(key) {
        Entry::Occupied(holder) => Err(holder.get().clone()),
        Entry::Vacant(free) => {
            free.insert(by);
            Ok(())
        }
    }
}

impl Claims {
    /// The claims of VMs that are already running, each named by VM name
    /// (and device id). A drive whose file cannot be found claims nothing.
    pub(crate) fn running(vms: &[VmSpec]) -> Self {
        let mut claims = Claims::default();
        for vm in vms {
            let who = format!("VM {:?}", vm.name);
            if let Some(vsock) = &vm.vsock {
                let _ = claims.cid(vsock.guest_cid, who.clone());
                let _ = claims.socket(&vsock.uds_path, who.clone());
            }
            for net in &vm.net {
                let by = format!("{who} interface {:?}", net.id);
                let _ = claims.mac(net.mac, by.clone());
                let _ = claims.tap(&net.tap, by);
            }
            for drive in &vm.drives {
                if let Some(id) = file_id(&drive.path) {
                    let by = format!("{who} drive {:?}", drive.id);
                    let _ = claims.file(id, !drive.read_only, by);
                }
            }
        }
        claims
    }

    pub(crate) fn cid(&mut self, cid: u32, by: String) -> Result<(), String> {
        take(&mut self.cids, cid, by)
    }

    pub(crate) fn socket(&mut self, path: &Path, by: String) -> Result<(), String> {
        take(&mut self.sockets, path.to_path_buf(), by)
    }

    pub(crate) fn mac(&mut self, mac: [u8; 6], by: String) -> Result<(), String> {
        take(&mut self.macs, mac, by)
    }

    pub(crate) fn tap(&mut self, tap: &str, by: String) -> Result<(), String> {
        take(&mut self.taps, tap.to_string(), by)
    }

    /// Attaches file `id` at `by`; refused (naming the first place and
    /// whether it is writable there) when either attachment is writable.
    pub(crate) fn file(
        &mut self,
        id: FileId,
        writable: bool,
        by: String,
    ) -> Result<(), (String, bool)> {
        match self.files.entry(id) {
            Entry::Occupied(first) if first.get().1 || writable => Err(first.get().clone()),
            Entry::Occupied(_) => Ok(()),
            Entry::Vacant(free) => {
                free.insert((by, writable));
                Ok(())
            }
        }
    }
}

/// The identity of the file at `path` (symbolic links followed).
pub(crate) fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_files_are_exclusive_read_only_ones_shared() {
        let mut claims = Claims::default();
        assert!(claims.file((1, 2), false, "a".into()).is_ok());
        assert!(claims.file((1, 2), false, "b".into()).is_ok());
        assert_eq!(
            claims.file((1, 2), true, "c".into()),
            Err(("a".to_string(), false))
        );
        assert!(claims.file((1, 3), true, "d".into()).is_ok());
        assert_eq!(
            claims.file((1, 3), false, "e".into()),
            Err(("d".to_string(), true))
        );
    }

    #[test]
    fn a_second_claim_names_the_first() {
        let mut claims = Claims::default();
        assert!(claims.cid(3, "vms[0].vsock.guest_cid".into()).is_ok());
        assert_eq!(
            claims.cid(3, "vms[1].vsock.guest_cid".into()),
            Err("vms[0].vsock.guest_cid".to_string())
        );
        assert!(claims.tap("tap0", "x".into()).is_ok());
        assert!(claims.tap("tap1", "y".into()).is_ok());
    }
}
