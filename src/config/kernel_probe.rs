//! Reads just enough of a kernel image to know its format, its PVH entry and
//! how far up guest memory it loads. Reads are bounded (the first page, the
//! program headers and small note segments), so a huge file is never slurped,
//! and only regular files are opened, so a FIFO never blocks validation.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use linux_loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::elf::{
    Elf64_Ehdr, Elf64_Nhdr, Elf64_Phdr, EI_CLASS, EI_DATA, ELFCLASS32, ELFCLASS64, ELFDATA2LSB,
    EM_X86_64, ET_EXEC, PT_LOAD, PT_NOTE,
};
use thiserror::Error;
use vm_memory::ByteValued;

use super::spec::KernelFormat;
use crate::layout::HIMEM_START;

/// What probing a kernel image found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelImage {
    pub format: KernelFormat,
    /// Exclusive end of the guest-physical range the kernel occupies once
    /// loaded (ELF: highest `p_paddr + p_memsz`; bzImage: 1 MiB + `init_size`).
    pub load_end: u64,
}

/// Why a file could not be used. Messages follow the file's quoted name.
#[derive(Debug, Error)]
pub enum FileError {
    #[error("does not exist")]
    NotFound,
    #[error("is a directory, not {0}")]
    Directory(&'static str),
    #[error("is not a regular file (it is a {0})")]
    NotRegular(&'static str),
    #[error("is empty")]
    Empty,
    #[error("cannot be read: {0}")]
    Io(#[source] io::Error),
}

/// Why a kernel image was refused. Messages follow the file's quoted name.
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("is neither an ELF64 x86_64 vmlinux nor a bzImage")]
    Unrecognized,
    /// Recognised as ELF or bzImage but unusable; the text says why.
    #[error("{0}")]
    Invalid(String),
}

impl From<io::Error> for ProbeError {
    fn from(e: io::Error) -> Self {
        ProbeError::File(FileError::Io(e))
    }
}

/// Bytes read from the start of the file: the ELF header or the bzImage setup header.
const HEAD_LEN: u64 = 4096;
/// ELF64 program header size.
const PHDR_LEN: usize = std::mem::size_of::<Elf64_Phdr>();
/// Most program headers read (a vmlinux has about five).
const MAX_PHDRS: usize = 256;
/// Most bytes read from one PT_NOTE segment, and most note segments read.
const MAX_NOTE_LEN: u64 = 64 * 1024;
const MAX_NOTE_SEGMENTS: usize = 16;
/// Xen's note type for the 32-bit PVH entry point (linux-loader keeps its
/// copy private to its loader).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Where the setup header sits in a bzImage, and where its fields up to
/// `init_size` (the last one read) end.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
const SETUP_HEADER_NEEDED: u64 = 0x264;
const BOOT_SECTOR_MAGIC: u16 = 0xaa55;
const SETUP_HEADER_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// Boot protocol 2.12: the first with `xloadflags` and a 64-bit entry.
const MIN_BOOT_PROTOCOL: u16 = 0x020c;

/// Opens `path` only if it is a non-empty regular file; `what` names the
/// expected content in the "is a directory" message (e.g. "a kernel image").
/// Returns the file and its length.
pub fn open_regular(path: &Path, what: &'static str) -> Result<(File, u64), FileError> {
    let metadata = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => FileError::NotFound,
        _ => FileError::Io(e),
    })?;
    check_regular(&metadata, what)?;
    // O_NONBLOCK: should the path be swapped for a FIFO after the check, the
    // open still does not block. It has no effect on regular files.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(FileError::Io)?;
    let metadata = file.metadata().map_err(FileError::Io)?;
    check_regular(&metadata, what)?;
    if metadata.len() == 0 {
        return Err(FileError::Empty);
    }
    Ok((file, metadata.len()))
}

fn check_regular(metadata: &std::fs::Metadata, what: &'static str) -> Result<(), FileError> {
    let kind = metadata.file_type();
    if kind.is_dir() {
        return Err(FileError::Directory(what));
    }
    if kind.is_file() {
        return Ok(());
    }
    Err(FileError::NotRegular(if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_char_device() {
        "character device"
    } else {
        "special file"
    }))
}

/// Checks that `path` is a usable initrd and returns its size in bytes.
pub fn probe_initrd(path: &Path) -> Result<u64, FileError> {
    open_regular(path, "an initrd image").map(|(_, len)| len)
}

/// Identifies the kernel image at `path`.
pub fn probe_kernel(path: &Path) -> Result<KernelImage, ProbeError> {
    let (file, len) = open_regular(path, "a kernel image")?;
    let head = read_at(&file, 0, len.min(HEAD_LEN))?;
    if head.starts_with(b"\x7fELF") {
        probe_elf(&file, len, &head)
    } else if let Some(hdr) = bzimage_header(&head) {
        probe_bzimage(len, &head, &hdr)
    } else {
        Err(ProbeError::Unrecognized)
    }
}

fn read_at(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| io::Error::other("read length overflows"))?;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// A header struct from the start of `bytes`, or `None` if too few bytes.
/// The structs are linux-loader's `repr(C)` copies of the ELF and boot
/// protocol headers; both formats are little-endian, like the x86_64 host.
fn header<T: ByteValued + Default>(bytes: &[u8]) -> Option<T> {
    let mut value = T::default();
    value
        .as_mut_slice()
        .copy_from_slice(bytes.get(..std::mem::size_of::<T>())?);
    Some(value)
}

fn u32_at(buf: &[u8], offset: usize) -> Option<u32> {
    let bytes = buf.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn invalid(message: impl Into<String>) -> ProbeError {
    ProbeError::Invalid(message.into())
}

fn truncated(what: &str, needed: u64, len: u64) -> ProbeError {
    invalid(format!(
        "is truncated: {what} needs {needed} bytes but the file has {len}"
    ))
}

/// Checks the ELF header's identification, machine, type, entry and
/// program header geometry.
fn check_elf_header(ehdr: &Elf64_Ehdr) -> Result<(), ProbeError> {
    match ehdr.e_ident[EI_CLASS] {
        ELFCLASS64 => {}
        ELFCLASS32 => {
            return Err(invalid(
                "is a 32-bit ELF file; Hearth needs an ELF64 x86_64 vmlinux",
            ))
        }
        class => {
            return Err(invalid(format!(
                "is an ELF file with invalid class {class}"
            )))
        }
    }
    if ehdr.e_ident[EI_DATA] != ELFDATA2LSB {
        return Err(invalid(
            "is a big-endian ELF file; Hearth needs an ELF64 x86_64 vmlinux",
        ));
    }
    let (machine, type_, entry) = (ehdr.e_machine, ehdr.e_type, ehdr.e_entry);
    if machine != EM_X86_64 {
        return Err(invalid(format!(
            "is an ELF64 file for machine {machine}, not x86_64 ({EM_X86_64})"
        )));
    }
    if type_ != ET_EXEC {
        return Err(invalid(format!(
            "is an ELF64 x86_64 file of type {type_}, not an executable (ET_EXEC = {ET_EXEC}); a vmlinux is an executable"
        )));
    }
    if entry < HIMEM_START {
        return Err(invalid(format!(
            "has its entry point at {entry:#x}, below 1 MiB where Hearth keeps the boot structures"
        )));
    }
    let (phentsize, phnum) = (ehdr.e_phentsize, ehdr.e_phnum);
    if usize::from(phentsize) != PHDR_LEN {
        return Err(invalid(format!(
            "has program headers of {phentsize} bytes; ELF64 uses {PHDR_LEN}"
        )));
    }
    if phnum == 0 {
        return Err(invalid("has no program headers"));
    }
    if usize::from(phnum) > MAX_PHDRS {
        return Err(invalid(format!(
            "has {phnum} program headers, more than the {MAX_PHDRS} Hearth reads"
        )));
    }
    Ok(())
}

fn probe_elf(file: &File, len: u64, head: &[u8]) -> Result<KernelImage, ProbeError> {
    let ehdr_len = std::mem::size_of::<Elf64_Ehdr>() as u64;
    let ehdr: Elf64_Ehdr =
        header(head).ok_or_else(|| truncated("the ELF header", ehdr_len, len))?;
    check_elf_header(&ehdr)?;
    let phoff = ehdr.e_phoff;
    let table_len = u64::from(ehdr.e_phnum) * PHDR_LEN as u64;
    let table_end = phoff
        .checked_add(table_len)
        .ok_or_else(|| invalid(format!("has an invalid program header offset {phoff:#x}")))?;
    if table_end > len {
        return Err(truncated("the program header table", table_end, len));
    }
    let table = read_at(file, phoff, table_len)?;

    let mut load_end: Option<u64> = None;
    let mut pvh_entry = None;
    let mut notes_read = 0;
    for (index, bytes) in table.chunks_exact(PHDR_LEN).enumerate() {
        let phdr: Elf64_Phdr =
            header(bytes).ok_or_else(|| truncated("a program header", table_end, len))?;
        let file_end = phdr.p_offset.saturating_add(phdr.p_filesz);
        match phdr.p_type {
            PT_LOAD => {
                if file_end > len {
                    return Err(truncated(&format!("segment {index}"), file_end, len));
                }
                let end = segment_end(index, &phdr)?;
                load_end = Some(load_end.map_or(end, |e| e.max(end)));
            }
            PT_NOTE if notes_read < MAX_NOTE_SEGMENTS && pvh_entry.is_none() => {
                notes_read += 1;
                if file_end > len {
                    return Err(truncated(&format!("note segment {index}"), file_end, len));
                }
                let notes = read_at(file, phdr.p_offset, phdr.p_filesz.min(MAX_NOTE_LEN))?;
                let align = if phdr.p_align == 8 { 8 } else { 4 };
                pvh_entry = find_pvh_entry(&notes, align)?;
            }
            _ => {}
        }
    }
    let load_end = load_end.ok_or_else(|| invalid("has no loadable (PT_LOAD) segment"))?;
    Ok(KernelImage {
        format: KernelFormat::Elf { pvh_entry },
        load_end,
    })
}

/// Exclusive end of loadable segment `index` in guest-physical memory.
fn segment_end(index: usize, phdr: &Elf64_Phdr) -> Result<u64, ProbeError> {
    let (paddr, filesz, memsz) = (phdr.p_paddr, phdr.p_filesz, phdr.p_memsz);
    if filesz > memsz {
        return Err(invalid(format!(
            "has segment {index} with more file bytes ({filesz}) than memory bytes ({memsz})"
        )));
    }
    paddr.checked_add(memsz).ok_or_else(|| {
        invalid(format!(
            "has segment {index} at {paddr:#x} + {memsz:#x} bytes, past the end of the address space"
        ))
    })
}

/// Scans ELF notes for Xen's `XEN_ELFNOTE_PHYS32_ENTRY`, whose descriptor is
/// the 32-bit PVH entry (Linux stores it as a 64-bit value; the high half must be 0).
fn find_pvh_entry(notes: &[u8], align: usize) -> Result<Option<u32>, ProbeError> {
    let round = |n: usize| n.checked_add(align - 1).map(|n| n & !(align - 1));
    let mut pos = 0usize;
    while let Some(nhdr) = notes.get(pos..).and_then(header::<Elf64_Nhdr>) {
        let (namesz, descsz) = (nhdr.n_namesz as usize, nhdr.n_descsz as usize);
        let name_start = pos + std::mem::size_of::<Elf64_Nhdr>();
        let Some(desc_start) = name_start.checked_add(namesz).and_then(round) else {
            break;
        };
        let Some(desc_end) = desc_start.checked_add(descsz) else {
            break;
        };
        let (Some(name), Some(desc)) = (
            notes.get(name_start..name_start + namesz),
            notes.get(desc_start..desc_end),
        ) else {
            break;
        };
        if nhdr.n_type == XEN_ELFNOTE_PHYS32_ENTRY
            && name.strip_suffix(b"\0").unwrap_or(name) == b"Xen"
        {
            let entry = u32_at(desc, 0).ok_or_else(|| {
                invalid(format!(
                    "has a PVH entry note with a {descsz}-byte descriptor; expected 4 or 8"
                ))
            })?;
            if u32_at(desc, 4).is_some_and(|high| high != 0) {
                return Err(invalid("has a PVH entry note pointing above 4 GiB"));
            }
            return Ok(Some(entry));
        }
        match round(desc_end) {
            Some(next) if next > pos => pos = next,
            _ => break,
        }
    }
    Ok(None)
}

/// The setup header of a bzImage: the boot sector signature and "HdrS".
fn bzimage_header(head: &[u8]) -> Option<setup_header> {
    // A short file leaves the fields past its end zero; the checks below
    // either refuse those zeros or ask for the bytes.
    let bytes = head.get(SETUP_HEADER_OFFSET..)?;
    let mut hdr = setup_header::default();
    let n = bytes.len().min(std::mem::size_of::<setup_header>());
    hdr.as_mut_slice()[..n].copy_from_slice(&bytes[..n]);
    (hdr.boot_flag == BOOT_SECTOR_MAGIC && hdr.header == SETUP_HEADER_MAGIC).then_some(hdr)
}

/// Checks a bzImage's setup header. Its protected-mode code is copied to
/// `code32_start`; a 64-bit kernel then decompresses itself to its runtime
/// address (at least `pref_address`) and needs `init_size` bytes from there.
fn probe_bzimage(len: u64, head: &[u8], hdr: &setup_header) -> Result<KernelImage, ProbeError> {
    let version = hdr.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(invalid(format!(
            "is a bzImage with boot protocol {}.{:02}, but Hearth needs 2.12 or later (a 64-bit kernel)",
            version >> 8,
            version & 0xff
        )));
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(invalid(
            "is a bzImage without a 64-bit entry point (XLF_KERNEL_64 is not set); Hearth needs a 64-bit kernel",
        ));
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(invalid(
            "is a bzImage that does not load at 1 MiB (LOADED_HIGH is not set in loadflags)",
        ));
    }
    if (head.len() as u64) < SETUP_HEADER_NEEDED {
        return Err(truncated(
            "the bzImage setup header",
            SETUP_HEADER_NEEDED,
            len,
        ));
    }
    let code32_start = u64::from(hdr.code32_start);
    if code32_start < HIMEM_START {
        return Err(invalid(format!(
            "is a bzImage with code32_start {code32_start:#x}, below 1 MiB"
        )));
    }
    let (pref_address, init_size) = (hdr.pref_address, u64::from(hdr.init_size));
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_len = (setup_sects + 1) * 512;
    if setup_len >= len {
        return Err(truncated(
            "the bzImage (setup plus kernel)",
            setup_len + 1,
            len,
        ));
    }
    let copied_end = code32_start + (len - setup_len);
    let runtime_end = code32_start
        .max(pref_address)
        .checked_add(init_size)
        .ok_or_else(|| invalid(format!("has an invalid pref_address {pref_address:#x}")))?;
    Ok(KernelImage {
        format: KernelFormat::BzImage,
        load_end: copied_end.max(runtime_end),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{bzimage, elf, TempDir};
    use super::*;

    #[test]
    fn elf_with_and_without_pvh_note() {
        let dir = TempDir::new("probe_elf");
        let plain = dir.write("plain", &elf(&[(0x100_0000, 0x20_0000)], None));
        let pvh = dir.write(
            "pvh",
            &elf(
                &[(0x100_0000, 0x10_0000), (0x300_0000, 0x1000)],
                Some(0x100_1234),
            ),
        );
        assert_eq!(
            probe_kernel(&plain).expect("must succeed"),
            KernelImage {
                format: KernelFormat::Elf { pvh_entry: None },
                load_end: 0x120_0000
            }
        );
        assert_eq!(
            probe_kernel(&pvh).expect("must succeed"),
            KernelImage {
                format: KernelFormat::Elf {
                    pvh_entry: Some(0x100_1234)
                },
                load_end: 0x300_1000
            }
        );
    }

    #[test]
    fn bzimage_header() {
        let dir = TempDir::new("probe_bz");
        let good = dir.write("bz", &bzimage(0x20f, true, 0x200_0000));
        assert_eq!(
            probe_kernel(&good).expect("must succeed"),
            KernelImage {
                format: KernelFormat::BzImage,
                load_end: 0x210_0000
            }
        );
        // A Linux kernel decompresses to pref_address (16 MiB) and needs init_size from there.
        let mut linux = bzimage(0x20f, true, 0x200_0000);
        linux[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        let linux = dir.write("linux", &linux);
        assert_eq!(
            probe_kernel(&linux).expect("must succeed").load_end,
            0x300_0000
        );
        let mut low = bzimage(0x20f, true, 0x100);
        low[0x211] = 0;
        let low = dir.write("low", &low);
        let err = probe_kernel(&low).expect_err("must fail").to_string();
        assert!(err.contains("LOADED_HIGH"), "{err}");
        let old = dir.write("old", &bzimage(0x20b, true, 0x100));
        let err = probe_kernel(&old).expect_err("must fail").to_string();
        assert!(err.contains("boot protocol 2.11"), "{err}");
        let no64 = dir.write("no64", &bzimage(0x20f, false, 0x100));
        let err = probe_kernel(&no64).expect_err("must fail").to_string();
        assert!(err.contains("XLF_KERNEL_64"), "{err}");
    }

    #[test]
    fn wrong_elf_variants_say_why() {
        let dir = TempDir::new("probe_bad_elf");
        let mut arm = elf(&[(0x100_0000, 0x1000)], None);
        arm[18] = 183;
        let mut dyn_ = elf(&[(0x100_0000, 0x1000)], None);
        dyn_[16] = 3;
        let mut low_entry = elf(&[(0x100_0000, 0x1000)], None);
        low_entry[24..32].copy_from_slice(&0x7c00u64.to_le_bytes());
        let mut class32 = elf(&[(0x100_0000, 0x1000)], None);
        class32[4] = 1;
        let cases = [
            (arm, "machine 183"),
            (dyn_, "type 3"),
            (class32, "32-bit"),
            (low_entry, "entry point at 0x7c00, below 1 MiB"),
            (b"\x7fELF".to_vec(), "truncated"),
            (elf(&[], None), "no program headers"),
            (elf(&[], Some(0x1000)), "no loadable"),
        ];
        for (i, (bytes, expect)) in cases.into_iter().enumerate() {
            let path = dir.write(&format!("k{i}"), &bytes);
            let err = probe_kernel(&path).expect_err("must fail").to_string();
            assert!(err.contains(expect), "case {i}: {err}");
        }
    }

    #[test]
    fn truncated_segment_is_reported() {
        let dir = TempDir::new("probe_trunc");
        let mut bytes = elf(&[(0x100_0000, 0x1000)], None);
        bytes.truncate(bytes.len() - 8);
        let path = dir.write("k", &bytes);
        let err = probe_kernel(&path).expect_err("must fail").to_string();
        assert!(err.contains("is truncated: segment 0"), "{err}");
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = TempDir::new("probe_special");
        assert!(matches!(
            probe_kernel(dir.path()),
            Err(ProbeError::File(FileError::Directory(_)))
        ));
        assert!(matches!(
            probe_kernel(&dir.path().join("missing")),
            Err(ProbeError::File(FileError::NotFound))
        ));
        let empty = dir.write("empty", b"");
        assert!(matches!(
            probe_kernel(&empty),
            Err(ProbeError::File(FileError::Empty))
        ));
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status();
        if status.is_ok_and(|s| s.success()) {
            let err = probe_kernel(&fifo).expect_err("must fail").to_string();
            assert_eq!(err, "is not a regular file (it is a FIFO)");
        }
        let err = probe_kernel(Path::new("/dev/null"))
            .expect_err("must fail")
            .to_string();
        assert_eq!(err, "is not a regular file (it is a character device)");
    }

    #[test]
    fn the_test_guest_images_probe_as_built() {
        let elf = probe_kernel(Path::new(env!("HEARTH_TEST_GUEST_ELF"))).expect("guest ELF");
        let KernelFormat::Elf {
            pvh_entry: Some(entry),
        } = elf.format
        else {
            panic!("the guest ELF carries a PVH note: {elf:?}");
        };
        assert!(u64::from(entry) >= HIMEM_START && u64::from(entry) < elf.load_end);
        let bz = probe_kernel(Path::new(env!("HEARTH_TEST_GUEST_BZIMAGE"))).expect("bzImage");
        assert_eq!(bz.format, KernelFormat::BzImage);
        assert_eq!(bz.load_end, elf.load_end, "the same image, loaded at 1 MiB");
    }
}
