//! Loading a kernel and preparing what it expects to find at its entry:
//! the image itself (ELF vmlinux or bzImage, through linux-loader), the
//! initrd, the command line, boot_params or the PVH start info with the
//! memory map, and the MP table.

pub mod cpu;
pub mod mptable;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, E820_MAX_ENTRIES_ZEROPAGE};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{
    load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::{BootProtocol, KernelFormat, KernelSpec};
use crate::layout::{
    e820_map, low_ram_end, CMDLINE_ADDR, HIMEM_START, INITRD_ADDR_MAX, PVH_INFO_ADDR,
    PVH_MEMMAP_ADDR, ZERO_PAGE_ADDR,
};
pub use cpu::EntryPoint;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load kernel {path}: {source}")]
    Load {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {0} has no PVH entry note, but kernel.protocol is \"pvh\"")]
    NoPvhEntry(PathBuf),
    #[error("the PVH protocol needs an ELF kernel; {0} is a bzImage")]
    PvhOnBzImage(PathBuf),
    #[error("initrd {path} ({size} bytes) does not fit in guest memory between the kernel end {kernel_end:#x} and {limit:#x}")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("cannot read initrd {path}: {source}")]
    Initrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the command line ({len} bytes, at most {max}) was refused: {source}")]
    Cmdline {
        len: usize,
        max: usize,
        source: linux_loader::cmdline::Error,
    },
    #[error("cannot write the command line at {CMDLINE_ADDR:#x}: {0}")]
    WriteCmdline(linux_loader::loader::Error),
    #[error("the e820 map has {0} entries, more than boot_params holds")]
    E820TooLarge(usize),
    #[error("cannot write the boot structures: {}", configurator_detail(.0))]
    Configure(linux_loader::configurator::Error),
    #[error("cannot write boot structures to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
}

/// Which of the three entry paths a kernel was started through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPath {
    /// ELF vmlinux, 64-bit Linux boot protocol.
    Linux64,
    /// ELF vmlinux through its PVH note.
    Pvh,
    /// bzImage, 64-bit entry at load address + 0x200.
    BzImage,
}

impl BootPath {
    pub fn name(self) -> &'static str {
        match self {
            BootPath::Linux64 => "linux64",
            BootPath::Pvh => "pvh",
            BootPath::BzImage => "bzimage",
        }
    }
}

/// The result of loading: where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct BootSetup {
    pub entry: EntryPoint,
    pub path: BootPath,
}

/// Room for the command line, its terminating NUL included.
pub const CMDLINE_CAPACITY: usize = crate::config::MAX_CMDLINE_LEN + 1;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const PVH_MAGIC: u32 = 0x336e_c578;
/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_ENTRY64_OFFSET: u64 = 0x200;

/// Loads the kernel, initrd and command line and writes the boot structures
/// for a guest of `mem_bytes` with `vcpus` vCPUs.
pub fn load(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    vcpus: u8,
    kernel: &KernelSpec,
    cmdline: &str,
) -> Result<BootSetup, BootError> {
    let mut image = File::open(&kernel.path).map_err(|source| BootError::Open {
        path: kernel.path.clone(),
        source,
    })?;
    let load_err = |source| BootError::Load {
        path: kernel.path.clone(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    let (loaded, path): (KernelLoaderResult, BootPath) = match kernel.format {
        KernelFormat::BzImage => {
            if kernel.protocol == BootProtocol::Pvh {
                return Err(BootError::PvhOnBzImage(kernel.path.clone()));
            }
            let r = BzImage::load(mem, None, &mut image, himem).map_err(load_err)?;
            (r, BootPath::BzImage)
        }
        KernelFormat::Elf { .. } => {
            let r = Elf::load(mem, None, &mut image, himem).map_err(load_err)?;
            let pvh = matches!(r.pvh_boot_cap, PvhBootCapability::PvhEntryPresent(_));
            let path = match (kernel.protocol, pvh) {
                (BootProtocol::Pvh, false) => {
                    return Err(BootError::NoPvhEntry(kernel.path.clone()))
                }
                (BootProtocol::Pvh, true) | (BootProtocol::Auto, true) => BootPath::Pvh,
                (BootProtocol::Linux, _) | (BootProtocol::Auto, false) => BootPath::Linux64,
            };
            (r, path)
        }
    };

    let initrd = match &kernel.initrd {
        Some(p) => Some(load_initrd(mem, mem_bytes, loaded.kernel_end, p)?),
        None => None,
    };
    let (cmdline, cmdline_len) = kernel_cmdline(cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline).map_err(BootError::WriteCmdline)?;
    mptable::setup(mem, usize::from(vcpus))?;

    let entry = match path {
        BootPath::Pvh => {
            let PvhBootCapability::PvhEntryPresent(rip) = loaded.pvh_boot_cap else {
                return Err(BootError::NoPvhEntry(kernel.path.clone()));
            };
            write_pvh_start_info(mem, mem_bytes, cmdline_len, initrd)?;
            EntryPoint::Pvh {
                rip: rip.0,
                start_info: PVH_INFO_ADDR,
            }
        }
        BootPath::Linux64 | BootPath::BzImage => {
            write_zero_page(mem, mem_bytes, &loaded, cmdline_len, initrd)?;
            let rip = match path {
                BootPath::BzImage => loaded.kernel_load.0 + BZIMAGE_ENTRY64_OFFSET,
                _ => loaded.kernel_load.0,
            };
            EntryPoint::Linux64 {
                rip,
                boot_params: ZERO_PAGE_ADDR,
            }
        }
    };
    Ok(BootSetup { entry, path })
}

/// Places the initrd page-aligned at the top of low RAM (below the Linux
/// protocol's initrd_addr_max) and returns `(address, size)`.
fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kernel_end: u64,
    path: &Path,
) -> Result<(u64, u64), BootError> {
    let io_err = |source| BootError::Initrd {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let size = file.seek(SeekFrom::End(0)).map_err(io_err)?;
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let limit = low_ram_end(mem_bytes).min(INITRD_ADDR_MAX + 1);
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        kernel_end,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    let mut buf = Vec::with_capacity(len);
    file.take(size).read_to_end(&mut buf).map_err(io_err)?;
    mem.write_slice(&buf, GuestAddress(addr))?;
    Ok((addr, size))
}

/// The command line as linux-loader's [`Cmdline`] (printable ASCII that
/// fits in [`CMDLINE_CAPACITY`] with its NUL) and its length without the NUL.
fn kernel_cmdline(cmdline: &str) -> Result<(Cmdline, usize), BootError> {
    let refused = |source| BootError::Cmdline {
        len: cmdline.len(),
        max: CMDLINE_CAPACITY - 1,
        source,
    };
    let mut line = Cmdline::new(CMDLINE_CAPACITY).map_err(refused)?;
    line.insert_str(cmdline).map_err(refused)?;
    let len = line.as_cstring().map_err(refused)?.as_bytes().len();
    Ok((line, len))
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    loaded: &KernelLoaderResult,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = loaded.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        // The initrd ends below INITRD_ADDR_MAX (< 4 GiB), so both fit in u32.
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(mem_bytes);
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootError::E820TooLarge(map.len()));
    }
    for (slot, &(addr, size, type_)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    params.e820_entries = map.len() as u8;
    let zero_page = BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams(&zero_page, mem).map_err(BootError::Configure)
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(mem_bytes)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: if cmdline_len == 0 { 0 } else { CMDLINE_ADDR },
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    // The module list follows the memory map.
    let modlist =
        PVH_MEMMAP_ADDR + (memmap.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
    let module = initrd.map(|(paddr, size)| hvm_modlist_entry {
        paddr,
        size,
        ..Default::default()
    });
    if module.is_some() {
        info.nr_modules = 1;
        info.modlist_paddr = modlist;
    }
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    if let Some(module) = module {
        params.set_modules(&[module], GuestAddress(modlist));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootError::Configure)
}

/// A configurator error with the detail its own message leaves out (which
/// structure, and whether it did not fit or could not be written).
fn configurator_detail(e: &linux_loader::configurator::Error) -> String {
    std::error::Error::source(e).map_or_else(|| e.to_string(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{E820_RAM, E820_RESERVED, MIB};
    use vm_memory::GuestMemoryBackend;

    const MEM: u64 = 64 * MIB;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("64 MiB of memory")
    }

    #[test]
    fn zero_page_carries_the_cmdline_initrd_and_memory_map() {
        let mem = memory();
        let (line, len) = kernel_cmdline("console=ttyS0 reboot=k").unwrap();
        load_cmdline(&mem, GuestAddress(CMDLINE_ADDR), &line).unwrap();
        let loaded = KernelLoaderResult::default();
        write_zero_page(&mem, MEM, &loaded, len, Some((0x200_0000, 0x1234))).unwrap();

        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.type_of_loader }, KERNEL_LOADER_OTHER);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ hdr.cmdline_size }, 22);
        assert_eq!(
            ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
            (0x200_0000, 0x1234)
        );
        let mut text = [0u8; 23];
        mem.read_slice(&mut text, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&text, b"console=ttyS0 reboot=k\0");

        let map = e820_map(MEM);
        assert_eq!(usize::from(params.e820_entries), map.len());
        let table = params.e820_table;
        for (entry, &(addr, size, type_)) in table.iter().zip(&map) {
            assert_eq!(
                ({ entry.addr }, { entry.size }, { entry.r#type }),
                (addr, size, type_)
            );
        }
    }

    #[test]
    fn pvh_start_info_points_at_the_memory_map_and_the_initrd() {
        let mem = memory();
        write_pvh_start_info(&mem, MEM, 5, Some((0x300_0000, 0x800))).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, PVH_MAGIC);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR);
        assert_eq!(info.memmap_paddr, PVH_MEMMAP_ADDR);
        let map = e820_map(MEM);
        assert_eq!(info.memmap_entries as usize, map.len());
        let entry_len = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
        for (i, &(addr, size, type_)) in map.iter().enumerate() {
            let at = GuestAddress(PVH_MEMMAP_ADDR + i as u64 * entry_len);
            let e: hvm_memmap_table_entry = mem.read_obj(at).unwrap();
            assert_eq!((e.addr, e.size, e.type_), (addr, size, type_));
        }
        assert!(map.iter().any(|e| e.2 == E820_RAM) && map.iter().any(|e| e.2 == E820_RESERVED));
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 0x800));
        assert!(info.modlist_paddr >= PVH_MEMMAP_ADDR + map.len() as u64 * entry_len);
    }

    #[test]
    fn pvh_without_cmdline_or_initrd_says_so() {
        let mem = memory();
        write_pvh_start_info(&mem, MEM, 0, None).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(
            (info.cmdline_paddr, info.nr_modules, info.modlist_paddr),
            (0, 0, 0)
        );
    }

    #[test]
    fn an_overlong_cmdline_is_refused_with_its_length() {
        let long = "x".repeat(CMDLINE_CAPACITY);
        let err = kernel_cmdline(&long).expect_err("must not fit").to_string();
        assert!(
            err.starts_with(&format!(
                "the command line ({} bytes, at most {}) was refused",
                CMDLINE_CAPACITY,
                CMDLINE_CAPACITY - 1
            )),
            "{err}"
        );
        let (_, len) = kernel_cmdline(&long[1..]).expect("the maximum fits");
        assert_eq!(len, CMDLINE_CAPACITY - 1);
    }

    #[test]
    fn boot_structures_past_the_end_of_memory_are_an_error() {
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x6010)]).unwrap();
        let err = write_pvh_start_info(&small, 0x6010, 0, None)
            .expect_err("the memory map does not fit")
            .to_string();
        assert!(
            err.contains("memory map table extends past the end"),
            "{err}"
        );
        assert!(small.last_addr().0 < PVH_MEMMAP_ADDR);
    }
}
