//! Loading a kernel and preparing what it expects to find at its entry:
//! the image itself (ELF vmlinux or bzImage, through linux-loader), the
//! initrd, the command line, boot_params or the PVH start info with the
//! memory map, and the MP table.

pub mod cpu;
pub mod mptable;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
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
    #[error("the command line is {0} bytes; at most {1} fit")]
    CmdlineTooLong(usize, usize),
    #[error("the e820 map has {0} entries, more than boot_params holds")]
    E820TooLarge(usize),
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
    write_cmdline(mem, cmdline)?;
    mptable::setup(mem, usize::from(vcpus))?;

    let entry = match path {
        BootPath::Pvh => {
            let PvhBootCapability::PvhEntryPresent(rip) = loaded.pvh_boot_cap else {
                return Err(BootError::NoPvhEntry(kernel.path.clone()));
            };
            write_pvh_start_info(mem, mem_bytes, cmdline, initrd)?;
            EntryPoint::Pvh {
                rip: rip.0,
                start_info: PVH_INFO_ADDR,
            }
        }
        BootPath::Linux64 | BootPath::BzImage => {
            write_zero_page(mem, mem_bytes, &loaded, cmdline, initrd)?;
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

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() >= CMDLINE_CAPACITY {
        return Err(BootError::CmdlineTooLong(
            cmdline.len(),
            CMDLINE_CAPACITY - 1,
        ));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))?;
    Ok(())
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    loaded: &KernelLoaderResult,
    cmdline: &str,
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
    params.hdr.cmdline_size = cmdline.len() as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(mem_bytes);
    if map.len() > params.e820_table.len() {
        return Err(BootError::E820TooLarge(map.len()));
    }
    for (slot, (addr, size, type_)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))?;
    Ok(())
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let map = e820_map(mem_bytes);
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *type_,
            reserved: 0,
        };
        let at = PVH_MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))?;
    }
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: if cmdline.is_empty() { 0 } else { CMDLINE_ADDR },
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let modlist =
            PVH_MEMMAP_ADDR + (map.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(modlist))?;
        info.nr_modules = 1;
        info.modlist_paddr = modlist;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_ADDR))?;
    Ok(())
}
