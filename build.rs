//! Builds the test guest kernel in `resources/guest/` (GNU assembly) into
//! `OUT_DIR`:
//!
//! - `hearth-guest.elf`: an ELF64 executable linked at 0x100000 with a PVH
//!   note, exported to the crate as `HEARTH_TEST_GUEST_ELF`;
//! - `hearth-guest.bzimage`: the same loaded image behind a Linux x86 boot
//!   sector and setup header (64-bit entry at payload offset 0x200),
//!   exported as `HEARTH_TEST_GUEST_BZIMAGE`;
//! - `hearth-quick.elf` and `hearth-quick-idle.elf`: the quick guest of
//!   `resources/guest-quick/` (its boot line with its first instructions,
//!   then a spin, or a halt), linked with the same script, exported as
//!   `HEARTH_QUICK_GUEST_ELF` and `HEARTH_QUICK_IDLE_GUEST_ELF`.
//!
//! Needs `gcc` (or `cc`), `ld` and `objcopy` on PATH; only std is used.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the guest is linked and where a bzImage loader puts its payload.
const LOAD_ADDR: u64 = 0x10_0000;
/// Boot sector plus `SETUP_SECTS` sectors of setup precede the payload.
const SETUP_SECTS: u8 = 1;
const SECTOR: usize = 512;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let guest_dir = manifest_dir.join("resources").join("guest");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", guest_dir.display());
    let mut entries: Vec<PathBuf> = fs::read_dir(&guest_dir)
        .unwrap_or_else(|e| {
            panic!(
                "cannot read the guest sources in {}: {e}",
                guest_dir.display()
            )
        })
        .map(|entry| entry.expect("a readable directory entry").path())
        .collect();
    entries.sort();
    for path in &entries {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    let elf = out_dir.join("hearth-guest.elf");
    let bzimage = out_dir.join("hearth-guest.bzimage");
    let script = guest_dir.join("guest.ld");
    build_elf(&guest_dir, &script, &out_dir, "guest", &[], &elf);
    build_bzimage(&elf, &out_dir, &bzimage);
    // The quick guest (its boot line first, then a spin), on the same
    // linker script.
    let quick_dir = manifest_dir.join("resources").join("guest-quick");
    println!("cargo:rerun-if-changed={}", quick_dir.display());
    let quick = out_dir.join("hearth-quick.elf");
    build_elf(&quick_dir, &script, &out_dir, "quick", &[], &quick);
    let quick_idle = out_dir.join("hearth-quick-idle.elf");
    build_elf(
        &quick_dir,
        &script,
        &out_dir,
        "quick-idle",
        &["-DQUICK_IDLE"],
        &quick_idle,
    );

    println!("cargo:rustc-env=HEARTH_TEST_GUEST_ELF={}", elf.display());
    println!("cargo:rustc-env=HEARTH_QUICK_GUEST_ELF={}", quick.display());
    println!(
        "cargo:rustc-env=HEARTH_QUICK_IDLE_GUEST_ELF={}",
        quick_idle.display()
    );
    println!(
        "cargo:rustc-env=HEARTH_TEST_GUEST_BZIMAGE={}",
        bzimage.display()
    );
}

/// Runs a tool and panics with its output if it cannot be started or fails.
fn run(mut command: Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| {
        panic!("{what}: cannot run {command:?}: {e} (is it installed and on PATH?)")
    });
    if !output.status.success() {
        panic!(
            "{what}: {command:?} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The C compiler driver used as assembler: `gcc`, else `cc`.
fn assembler() -> &'static str {
    let works = |name: &str| {
        Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works("gcc") {
        "gcc"
    } else if works("cc") {
        "cc"
    } else {
        panic!("building the test guest needs gcc or cc on PATH (to assemble resources/guest/*.S)");
    }
}

/// Assembles every `.S` of `guest_dir` with `defines` (objects named
/// `prefix-*.o`) and links them with `script` into `elf`.
fn build_elf(
    guest_dir: &Path,
    script: &Path,
    out_dir: &Path,
    prefix: &str,
    defines: &[&str],
    elf: &Path,
) {
    let cc = assembler();
    let mut objects = Vec::new();
    // Every .S file of the guest is one object: a new scenario file needs
    // no change here.
    let mut sources: Vec<PathBuf> = fs::read_dir(guest_dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", guest_dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "S"))
        .collect();
    sources.sort();
    for src in sources {
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("source")
            .to_string();
        let obj = out_dir.join(format!("{prefix}-{stem}.o"));
        let mut command = Command::new(cc);
        command
            .args(["-c", "-m64", "-x", "assembler-with-cpp"])
            .args(defines)
            .arg("-I")
            .arg(guest_dir)
            .arg("-o")
            .arg(&obj)
            .arg(&src);
        run(
            command,
            &format!("assembling the test guest's {}", src.display()),
        );
        objects.push(obj);
    }

    let mut command = Command::new("ld");
    command
        .args([
            "-nostdlib",
            "-static",
            "-z",
            "max-page-size=0x1000",
            "--build-id=none",
            "-T",
        ])
        .arg(script)
        .arg("-o")
        .arg(elf)
        .args(&objects);
    run(command, "linking the test guest");
}

/// The loadable extent of the ELF: (lowest p_paddr, highest p_paddr + p_memsz).
fn elf_load_extent(elf: &[u8]) -> (u64, u64) {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().expect("2 bytes"));
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().expect("8 bytes"));
    assert!(
        elf.len() >= 64 && elf[..4] == *b"\x7fELF" && elf[4] == 2,
        "the test guest is not an ELF64 file"
    );
    let phoff = usize::try_from(u64_at(0x20)).expect("e_phoff fits usize");
    let phentsize = usize::from(u16_at(0x36));
    let phnum = usize::from(u16_at(0x38));
    let (mut low, mut high) = (u64::MAX, 0);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        const PT_LOAD: u32 = 1;
        if u32_at(ph) == PT_LOAD {
            let paddr = u64_at(ph + 0x18);
            let memsz = u64_at(ph + 0x28);
            low = low.min(paddr);
            high = high.max(paddr + memsz);
        }
    }
    assert!(low < high, "the test guest ELF has no PT_LOAD segment");
    (low, high)
}

/// Wraps the ELF's loaded image as a bzImage: a boot sector and one setup
/// sector holding the Linux setup header, then the payload, which a loader
/// copies to `code32_start` (0x100000) and enters at payload offset 0x200.
fn build_bzimage(elf: &Path, out_dir: &Path, bzimage: &Path) {
    let payload_path = out_dir.join("hearth-guest.payload.bin");
    let mut command = Command::new("objcopy");
    command.args(["-O", "binary"]).arg(elf).arg(&payload_path);
    run(command, "extracting the test guest's loaded image");

    let elf_bytes = fs::read(elf).unwrap_or_else(|e| panic!("cannot read {}: {e}", elf.display()));
    let (low, high) = elf_load_extent(&elf_bytes);
    assert_eq!(
        low, LOAD_ADDR,
        "the test guest must be linked at {LOAD_ADDR:#x}"
    );
    let payload = fs::read(&payload_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", payload_path.display()));
    let init_size = u32::try_from(high - low).expect("the guest image is smaller than 4 GiB");
    let payload_len =
        u32::try_from(payload.len()).expect("the guest payload is smaller than 4 GiB");
    assert!(
        payload.len() > 0x200,
        "the guest payload must contain the 64-bit entry at offset 0x200"
    );

    let setup_len = (usize::from(SETUP_SECTS) + 1) * SECTOR;
    let mut image = vec![0u8; setup_len];
    let mut put =
        |offset: usize, bytes: &[u8]| image[offset..offset + bytes.len()].copy_from_slice(bytes);
    // struct setup_header (Documentation/arch/x86/boot.rst), at 0x1f1.
    put(0x1f1, &[SETUP_SECTS]); // setup_sects
    put(0x1f4, &payload_len.div_ceil(16).to_le_bytes()); // syssize, in 16-byte paragraphs
    put(0x1fa, &0xffffu16.to_le_bytes()); // vid_mode: "normal"
    put(0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(0x200, &[0xeb, 0x6a]); // jump: short jmp to 0x26c (real-mode setup is not supported)
    put(0x202, b"HdrS"); // header
    put(0x206, &0x020fu16.to_le_bytes()); // version 2.15
    put(0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(
        0x214,
        &u32::try_from(LOAD_ADDR)
            .expect("load address below 4 GiB")
            .to_le_bytes(),
    ); // code32_start
    put(0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(0x230, &0x10_0000u32.to_le_bytes()); // kernel_alignment
    put(0x234, &[0]); // relocatable_kernel: no, it is linked at 0x100000
    put(0x235, &[20]); // min_alignment: 1 MiB (log2)
    put(0x236, &0x0001u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64 (64-bit entry at +0x200)
    put(0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(0x258, &LOAD_ADDR.to_le_bytes()); // pref_address
    put(0x260, &init_size.to_le_bytes()); // init_size: the image plus its .bss
                                          // Real-mode setup entry (0x26c): cli; hlt; jmp back to the hlt.
    put(0x26c, &[0xfa, 0xf4, 0xeb, 0xfd]);
    image.extend_from_slice(&payload);
    fs::write(bzimage, &image)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", bzimage.display()));
}
