//! Checks on the test guest kernel that build.rs assembles from
//! `resources/guest/`; none of them needs KVM.
//!
//! The KVM on Hearth's development machines (kvm_pvm) ends the VM on SSE
//! arithmetic, popcnt, rdtscp, rdrand, cmpxchg16b, xsave/xrstor and int3, so
//! the guest must never contain them; and Hearth boots the guest both as an
//! ELF (through its PVH note) and as a bzImage.

use std::path::Path;
use std::process::Command;

const ELF: &str = env!("HEARTH_TEST_GUEST_ELF");
const BZIMAGE: &str = env!("HEARTH_TEST_GUEST_BZIMAGE");
const LOAD_ADDR: u64 = 0x10_0000;

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Runs a binutils tool and returns its stdout.
fn tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (binutils): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("binutils prints UTF-8")
}

struct ProgramHeader {
    p_type: u32,
    offset: usize,
    paddr: u64,
    filesz: usize,
    memsz: u64,
}

fn program_headers(elf: &[u8]) -> Vec<ProgramHeader> {
    let phoff = usize::try_from(u64_at(elf, 0x20)).expect("e_phoff fits usize");
    let phentsize = usize::from(u16_at(elf, 0x36));
    (0..usize::from(u16_at(elf, 0x38)))
        .map(|i| {
            let ph = phoff + i * phentsize;
            ProgramHeader {
                p_type: u32_at(elf, ph),
                offset: usize::try_from(u64_at(elf, ph + 0x08)).expect("p_offset fits usize"),
                paddr: u64_at(elf, ph + 0x18),
                filesz: usize::try_from(u64_at(elf, ph + 0x20)).expect("p_filesz fits usize"),
                memsz: u64_at(elf, ph + 0x28),
            }
        })
        .collect()
}

fn symbol(name: &str) -> u64 {
    let table = tool("nm", &[ELF]);
    table
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (addr, _kind, sym) = (fields.next()?, fields.next()?, fields.next()?);
            (sym == name).then(|| u64::from_str_radix(addr, 16).expect("nm prints hex addresses"))
        })
        .unwrap_or_else(|| panic!("the guest has no symbol {name}"))
}

/// The only loadable segment: (physical address, its bytes in the file, memsz).
fn loaded_image(elf: &[u8]) -> (u64, Vec<u8>, u64) {
    let loads: Vec<_> = program_headers(elf)
        .into_iter()
        .filter(|ph| ph.p_type == 1)
        .collect();
    assert_eq!(
        loads.len(),
        1,
        "the guest should have exactly one PT_LOAD segment"
    );
    let ph = &loads[0];
    (
        ph.paddr,
        elf[ph.offset..ph.offset + ph.filesz].to_vec(),
        ph.memsz,
    )
}

#[test]
fn guest_code_uses_only_instructions_kvm_pvm_can_run() {
    const FORBIDDEN: &[&str] = &[
        "popcnt",
        "rdtscp",
        "rdrand",
        "rdseed",
        "cmpxchg16b",
        "xsave",
        "xrstor",
        "fxsave",
        "fxrstor",
        "int3",
    ];
    // Code sections and the mode their instructions run in.
    let headers = tool("objdump", &["-h", "-w", ELF]);
    let code_sections: Vec<&str> = headers
        .lines()
        .filter(|line| line.contains("CODE"))
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    assert!(code_sections.contains(&".text"), "no .text in {headers}");

    let mut checked = 0;
    for section in code_sections {
        let mode = match section {
            ".text16" => "i8086",
            ".text32" => "i386",
            _ => "x86-64",
        };
        let listing = tool(
            "objdump",
            &[
                "-d",
                "-w",
                "--no-show-raw-insn",
                "-M",
                mode,
                "-j",
                section,
                ELF,
            ],
        );
        for line in listing.lines() {
            // "  100000:\tcli" -> the instruction text after the address.
            let Some((_, insn)) = line.split_once(":\t") else {
                continue;
            };
            let insn = insn.trim().to_lowercase();
            assert!(
                !insn.contains("xmm") && !insn.contains("ymm") && !insn.contains("zmm"),
                "{section} uses an SSE/AVX register, which kvm_pvm cannot emulate: {line}"
            );
            for word in insn.split(|c: char| !c.is_ascii_alphanumeric()) {
                assert!(
                    !FORBIDDEN.iter().any(|f| word.starts_with(f)),
                    "{section} uses {word}, which ends the VM under kvm_pvm: {line}"
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked > 100,
        "only {checked} instructions disassembled; is objdump working?"
    );
}

#[test]
fn guest_elf_is_linked_at_1_mib_with_the_linux64_entry_first() {
    let elf = read(ELF);
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "ELF64");
    assert_eq!(u16_at(&elf, 0x10), 2, "ET_EXEC");
    assert_eq!(u16_at(&elf, 0x12), 62, "EM_X86_64");
    assert_eq!(u64_at(&elf, 0x18), LOAD_ADDR, "e_entry is linux64 at 1 MiB");
    assert_eq!(symbol("linux64"), LOAD_ADDR);
    assert_eq!(symbol("bzimage"), LOAD_ADDR + 0x200);
    let (paddr, _, _) = loaded_image(&elf);
    assert_eq!(paddr, LOAD_ADDR);
}

#[test]
fn guest_elf_announces_its_pvh_entry_in_a_xen_note() {
    let elf = read(ELF);
    let notes: Vec<_> = program_headers(&elf)
        .into_iter()
        .filter(|ph| ph.p_type == 4)
        .collect();
    assert_eq!(notes.len(), 1, "one PT_NOTE segment");
    let (start, end) = (notes[0].offset, notes[0].offset + notes[0].filesz);

    let align4 = |n: usize| (n + 3) & !3;
    let mut at = start;
    let mut entry = None;
    while at + 12 <= end {
        let namesz = u32_at(&elf, at) as usize;
        let descsz = u32_at(&elf, at + 4) as usize;
        let n_type = u32_at(&elf, at + 8);
        let name = &elf[at + 12..at + 12 + namesz];
        let desc = at + 12 + align4(namesz);
        if name == b"Xen\0" && n_type == 18 {
            assert!(
                descsz >= 4,
                "XEN_ELFNOTE_PHYS32_ENTRY holds a 32-bit address"
            );
            entry = Some(u64::from(u32_at(&elf, desc)));
            if descsz >= 8 {
                assert_eq!(
                    u64_at(&elf, desc) >> 32,
                    0,
                    "QEMU reads 8 bytes: the high half must be 0"
                );
            }
        }
        at = desc + align4(descsz);
    }
    let entry = entry.expect("a Xen note of type XEN_ELFNOTE_PHYS32_ENTRY (18)");
    assert_eq!(entry, symbol("pvh"), "the note points at the pvh entry");

    let (paddr, bytes, _) = loaded_image(&elf);
    assert!(
        (paddr..paddr + bytes.len() as u64).contains(&entry),
        "the PVH entry {entry:#x} is inside the loaded image"
    );
}

#[test]
fn bzimage_has_a_linux_boot_header_for_a_64_bit_kernel_loaded_at_1_mib() {
    let bz = read(BZIMAGE);
    assert_eq!(u16_at(&bz, 0x1fe), 0xaa55, "boot_flag");
    assert_eq!(&bz[0x202..0x206], b"HdrS", "header magic");
    assert_eq!(u16_at(&bz, 0x206), 0x020f, "boot protocol 2.15");
    assert_eq!(bz[0x211] & 0x01, 0x01, "loadflags: LOADED_HIGH");
    assert_eq!(u32_at(&bz, 0x214), 0x10_0000, "code32_start");
    assert_eq!(bz[0x234], 0, "not relocatable");
    assert_eq!(u16_at(&bz, 0x236) & 0x01, 0x01, "xloadflags: XLF_KERNEL_64");
    assert_eq!(u32_at(&bz, 0x238), 2047, "cmdline_size");
    assert_eq!(u64_at(&bz, 0x258), 0x10_0000, "pref_address");

    // The payload after the setup sectors is exactly what the ELF loads.
    let setup_sects = usize::from(bz[0x1f1]);
    let payload = &bz[(setup_sects + 1) * 512..];
    let (_, image, memsz) = loaded_image(&read(ELF));
    assert_eq!(
        payload,
        &image[..],
        "the bzImage payload is the ELF's loaded image"
    );
    assert_eq!(
        u32_at(&bz, 0x1f4),
        (payload.len() as u32).div_ceil(16),
        "syssize"
    );
    assert!(
        u64::from(u32_at(&bz, 0x260)) >= memsz,
        "init_size covers .bss"
    );

    // startup_64: a loader enters at payload offset 0x200.
    let elf = read(ELF);
    let (paddr, _, _) = loaded_image(&elf);
    assert_eq!(paddr + 0x200, symbol("bzimage"));
}

#[test]
fn guest_files_exist_where_build_rs_says() {
    assert!(Path::new(ELF).is_file(), "{ELF}");
    assert!(Path::new(BZIMAGE).is_file(), "{BZIMAGE}");
}

/// Every scenario the guest README documents, in scenario-table order.
const SCENARIOS: &[&str] = &[
    "hello",
    "smp",
    "spin",
    "probe",
    "exit",
    "idle",
    "triple-fault",
    "wild-jump",
    "balloon",
    "mem-grow",
    "mem-idle",
    "bad-virtio",
    "blk-info",
    "blk-read",
    "blk-write",
    "blk-err",
    "blk-loop",
    "blk-bench",
    "blk-bad",
    "net-info",
    "net-tx",
    "net-rx",
    "net-arp",
    "net-flood",
    "net-bench",
    "hostile",
    "vsock-echo",
    "vsock-connect",
];

/// The bytes at guest physical address `addr` of the loaded image.
fn image_at(image: &(u64, Vec<u8>, u64), addr: u64) -> &[u8] {
    let offset = usize::try_from(addr - image.0).expect("an offset into the image");
    &image.1[offset..]
}

#[test]
fn the_scenario_table_holds_every_documented_scenario_and_nothing_else() {
    let elf = read(ELF);
    let image = loaded_image(&elf);
    let end = image.0 + image.1.len() as u64;
    let mut names = Vec::new();
    let mut row = symbol("scenario_table");
    loop {
        let bytes = image_at(&image, row);
        let (name, func) = (u64_at(bytes, 0), u64_at(bytes, 8));
        if name == 0 {
            break;
        }
        assert!(
            (image.0..end).contains(&func),
            "scenario function {func:#x} outside the image"
        );
        let text = image_at(&image, name);
        let len = text
            .iter()
            .position(|&b| b == 0)
            .expect("a NUL-terminated name");
        names.push(String::from_utf8(text[..len].to_vec()).expect("an ASCII name"));
        row += 16;
    }
    assert_eq!(names, SCENARIOS);
}

#[test]
fn guest_sources_stay_under_600_lines() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/guest");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("the guest sources") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "S" || e == "h") {
            let lines = std::fs::read_to_string(&path)
                .expect("a readable source")
                .lines()
                .count();
            assert!(lines <= 600, "{} has {lines} lines", path.display());
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "only {checked} sources found in {}",
        dir.display()
    );
}

/// The code of guest function `name`: from its symbol to the next one.
fn guest_code(name: &str) -> Vec<u8> {
    let start = symbol(name);
    let table = tool("nm", &["-n", ELF]);
    let next = table
        .lines()
        .filter_map(|line| u64::from_str_radix(line.split_whitespace().next()?, 16).ok())
        .find(|&addr| addr > start)
        .expect("a symbol after the function");
    let image = loaded_image(&read(ELF));
    image_at(&image, start)[..usize::try_from(next - start).expect("a small function")].to_vec()
}

/// Guest code copied into an executable page of this process. Only for
/// leaf functions that use no RIP-relative addresses.
struct HostCopy {
    page: *mut libc::c_void,
    len: usize,
}

impl HostCopy {
    fn new(code: &[u8]) -> HostCopy {
        let len = code.len().div_ceil(4096) * 4096;
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED, "mmap");
        // SAFETY: the mapping is `len >= code.len()` writable bytes and owned here.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), page.cast::<u8>(), code.len()) };
        // SAFETY: changes the protection of our own mapping only.
        let rc = unsafe { libc::mprotect(page, len, libc::PROT_READ | libc::PROT_EXEC) };
        assert_eq!(rc, 0, "mprotect");
        HostCopy { page, len }
    }
}

impl Drop for HostCopy {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`, which nothing uses any more.
        unsafe { libc::munmap(self.page, self.len) };
    }
}

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn the_guests_fnv1a64_is_fnv_1a_64() {
    let copy = HostCopy::new(&guest_code("fnv1a64"));
    // SAFETY: the copy is the guest's leaf function fnv1a64(hash: rdi, buf:
    // rsi, len: rdx) -> rax (System V), which only reads len bytes at buf
    // and uses caller-saved registers.
    let guest_fnv: extern "sysv64" fn(u64, *const u8, u64) -> u64 =
        unsafe { std::mem::transmute(copy.page) };
    for data in [&b""[..], b"a", b"foobar", &[0xffu8; 1000]] {
        let want = fnv1a64(data);
        assert_eq!(
            guest_fnv(0xcbf2_9ce4_8422_2325, data.as_ptr(), data.len() as u64),
            want,
            "FNV-1a 64 of {} bytes",
            data.len()
        );
    }
    assert_eq!(
        fnv1a64(b"a"),
        0xaf63_dc4c_8601_ec8c,
        "the published test vector"
    );
}

#[test]
fn the_guests_block_pattern_is_the_documented_one() {
    let copy = HostCopy::new(&guest_code("blk_pattern"));
    // SAFETY: the copy is the guest's leaf function blk_pattern(buf: rdi,
    // sector: rsi, sectors: rdx, seed: rcx) (System V), which writes
    // 512 * sectors bytes at buf and uses caller-saved registers.
    let pattern: extern "sysv64" fn(*mut u8, u64, u64, u64) =
        unsafe { std::mem::transmute(copy.page) };
    let (sector, sectors, seed) = (1000u64, 3u64, 0x1234u64);
    let mut buf = vec![0u8; 512 * 3];
    pattern(buf.as_mut_ptr(), sector, sectors, seed);
    for (i, word) in buf.chunks_exact(8).enumerate() {
        let (s, o) = (sector + i as u64 / 64, (i as u64 % 64) * 8);
        let want = (512 * s + o).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
        assert_eq!(
            u64::from_le_bytes(word.try_into().expect("8 bytes")),
            want,
            "sector {s} offset {o}"
        );
    }
}
