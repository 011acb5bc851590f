//! Test helpers: synthetic kernel images and self-cleaning temp directories.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A unique directory under `std::env::temp_dir()`, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "hearth-config-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `bytes` to `name` in the directory and returns its path.
    pub(crate) fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A minimal ELF64 x86_64 executable: one PT_LOAD per `(p_paddr, p_memsz)`
/// (16 file bytes each) and, with `pvh`, a PT_NOTE holding Xen's
/// PHYS32_ENTRY note with a 64-bit descriptor, as Linux writes it.
pub(crate) fn elf(loads: &[(u64, u64)], pvh: Option<u32>) -> Vec<u8> {
    let phnum = loads.len() + usize::from(pvh.is_some());
    let data_start = 64 + 56 * phnum as u64;
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // little endian
    out[6] = 1; // EV_CURRENT
    out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    let entry = loads.first().map_or(0x10_0000, |l| l.0);
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    out[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    out[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());

    let mut data = Vec::new();
    let mut phdr = |p_type: u32, offset: u64, paddr: u64, filesz: u64, memsz: u64, align: u64| {
        let mut h = Vec::with_capacity(56);
        h.extend_from_slice(&p_type.to_le_bytes());
        h.extend_from_slice(&7u32.to_le_bytes()); // RWX
        h.extend_from_slice(&offset.to_le_bytes());
        h.extend_from_slice(&paddr.to_le_bytes()); // p_vaddr
        h.extend_from_slice(&paddr.to_le_bytes()); // p_paddr
        h.extend_from_slice(&filesz.to_le_bytes());
        h.extend_from_slice(&memsz.to_le_bytes());
        h.extend_from_slice(&align.to_le_bytes());
        out.extend_from_slice(&h);
    };
    for &(paddr, memsz) in loads {
        let offset = data_start + data.len() as u64;
        data.extend_from_slice(&[0x90; 16]);
        phdr(1, offset, paddr, 16.min(memsz), memsz, 0x1000);
    }
    if let Some(entry) = pvh {
        let offset = data_start + data.len() as u64;
        let mut note = Vec::new();
        // An unrelated note first, so the scan has to skip one.
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&6u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(b"2.6\0");
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&8u32.to_le_bytes());
        note.extend_from_slice(&18u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&u64::from(entry).to_le_bytes());
        let len = note.len() as u64;
        data.extend_from_slice(&note);
        phdr(4, offset, 0, len, len, 4);
    }
    out.extend_from_slice(&data);
    out
}

/// A bzImage-shaped file: boot sector signature, "HdrS" setup header with
/// `version`, `xloadflags` bit XLF_KERNEL_64 when `kernel_64`, and `init_size`;
/// loaded high at 1 MiB with `pref_address` 1 MiB (like Hearth's test guest).
pub(crate) fn bzimage(version: u16, kernel_64: bool, init_size: u32) -> Vec<u8> {
    let mut out = vec![0u8; 8 * 512];
    out[0x1f1] = 4; // setup_sects
    out[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    out[0x202..0x206].copy_from_slice(b"HdrS");
    out[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    out[0x211] = 1; // loadflags: LOADED_HIGH
    out[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    out[0x236..0x238].copy_from_slice(&u16::from(kernel_64).to_le_bytes());
    out[0x258..0x260].copy_from_slice(&0x10_0000u64.to_le_bytes()); // pref_address
    out[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    out
}
