//! Step two of three: semantic checks of one parsed VM, producing a [`VmSpec`].
//!
//! Every section that parsed is checked and every problem is reported; a spec
//! is returned only when the VM has no problem at all. Checks read the kernel
//! and initrd files (see [`kernel_probe`]) but never touch KVM.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use super::claims::Claims;
use super::error::Errors;
use super::error::ROOT;
use super::kernel_probe::{self, KernelImage};
use super::parse::{join, shown, Parsed};
use super::raw::{ParsedVm, RawKernel, RawMemory, RawProtocol, RawSerial, RawSerialOutput};
use super::spec::*;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// Facts about the host that validation depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostInfo {
    /// `MemTotal` from `/proc/meminfo`, rounded down to MiB; `None` if unknown,
    /// in which case memory is not checked against it.
    pub mem_total_mib: Option<u64>,
    /// Online host CPUs; `None` if unknown, in which case `host.cpu.cpus`
    /// is not checked against it.
    pub online_cpus: Option<usize>,
}

impl HostInfo {
    pub(crate) fn probe() -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            mem_total_mib: parse_meminfo_total_mib(&meminfo),
            online_cpus: super::cpu::online_cpus(),
        }
    }
}

fn parse_meminfo_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib / 1024)
}

/// What validation needs besides the VM itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    /// Absolute directory that relative paths are resolved against.
    pub base_dir: &'a Path,
    pub host: &'a HostInfo,
    /// Whether the monitor has a memory budget (then every VM has a balloon).
    pub budget: bool,
    /// Where the host lists its network interfaces (`/sys/class/net`).
    pub net_dir: &'a Path,
    /// A monitor file for `hearth serve`: `vms` may be absent or empty.
    pub serving: bool,
}

/// Where the host lists its network interfaces.
pub(crate) const NET_DIR: &str = "/sys/class/net";

/// How errors name a field: by JSON path under a prefix, or by CLI flag.
#[derive(Debug, Clone)]
pub(crate) enum Naming {
    Json(String),
    Flags,
    /// A Firecracker config file: Hearth fields named as Firecracker's.
    Firecracker,
}

impl Naming {
    /// The name of the VM itself (`vms[1]`, or `<root>`).
    pub(crate) fn vm(&self) -> String {
        match self {
            Naming::Json(prefix) => shown(prefix).to_string(),
            Naming::Flags | Naming::Firecracker => ROOT.to_string(),
        }
    }

    /// The name of `field` (a JSON path within a VM, e.g. `cpu.vcpus`).
    pub(crate) fn at(&self, field: &str) -> String {
        match self {
            Naming::Json(prefix) => join(prefix, field),
            Naming::Flags => match field {
                "name" => "--name",
                "kernel" | "kernel.path" => "--kernel",
                "kernel.initrd" => "--initrd",
                "kernel.cmdline" => "--cmdline",
                "cpu.vcpus" => "--vcpus",
                "memory.size_mib" => "--memory",
                other => other,
            }
            .to_string(),
            Naming::Firecracker => super::firecracker::field_name(field),
        }
    }
}

/// Checks `name` (or supplies `default`); `None` if it was reported invalid.
pub(crate) fn resolve_name(
    name: &Parsed<String>,
    default: String,
    naming: &Naming,
    errors: &mut Errors,
) -> Option<String> {
    match name {
        Parsed::Absent => Some(default),
        Parsed::Failed => None,
        Parsed::Ok(name) if is_valid_name(name) => Some(name.clone()),
        Parsed::Ok(name) => {
            errors.push(
                naming.at("name"),
                format!("{name:?} must match [A-Za-z0-9_-]{{1,32}}"),
            );
            None
        }
    }
}

pub(crate) fn is_valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `value` as a `T` within `range` (`default` when absent); a value out of
/// range is reported at `field`.
pub(crate) fn ranged<T>(
    value: Option<u64>,
    default: T,
    range: RangeInclusive<T>,
    field: String,
    errors: &mut Errors,
) -> Option<T>
where
    T: TryFrom<u64> + PartialOrd + Display,
{
    let Some(value) = value else {
        return Some(default);
    };
    match T::try_from(value) {
        Ok(v) if range.contains(&v) => Some(v),
        _ => {
            let (lo, hi) = range.into_inner();
            errors.push(field, format!("{value} is out of range ({lo}..={hi})"));
            None
        }
    }
}

/// Validates one VM. `name` is `None` when it was already reported invalid;
/// `stdin` is the VM's resolved `serial.stdin`. What no two VMs may share is
/// checked against, and added to, `claims`.
pub(crate) fn validate_vm(
    vm: ParsedVm,
    name: Option<String>,
    stdin: bool,
    naming: &Naming,
    ctx: Ctx<'_>,
    claims: &mut Claims,
    errors: &mut Errors,
) -> Option<VmSpec> {
    let before = errors.len();
    let kernel = validate_kernel(vm.kernel, naming, ctx, errors);
    let cpu = super::cpu::validate_cpu(vm.cpu, naming, errors);
    let memory = validate_memory(vm.memory, naming, ctx.host, errors);
    let serial = validate_serial(vm.serial, stdin, naming, ctx.base_dir, errors);
    let acl = super::acl::validate_acl(vm.acl, naming, errors);
    let drives = super::block::validate_drives(vm.drives, naming, ctx.base_dir, claims, errors);
    let (vm_name, dir) = (name.as_deref(), ctx.net_dir);
    let net = super::net::validate_net(vm.net, vm_name, naming, dir, claims, errors);
    let vsock = super::net::validate_vsock(vm.vsock, naming, ctx.base_dir, claims, errors);
    let io = super::block::validate_io(vm.io, naming, errors);
    if let (Some(kernel), Some(memory)) = (&kernel, &memory) {
        check_fits(kernel, memory, naming, errors);
    }
    let (net, net_share) = net?;
    let mut spec = VmSpec {
        name: name?,
        memory_mib: memory?.mib,
        memory: memory?.policy,
        kernel: kernel?.spec,
        serial: serial?,
        vcpus: cpu.as_ref()?.vcpus,
        cpu: cpu?.policy,
        acl: acl?,
        drives: drives?,
        net,
        vsock: vsock?,
        io: io?,
        net_share,
    };
    if ctx.budget && spec.memory.balloon == BalloonMode::Auto {
        spec.memory.balloon = BalloonMode::On;
    }
    super::devices::check_plan(&spec, naming, errors);
    (errors.len() == before).then_some(spec)
}

/// A validated kernel section plus what is needed to check it fits in memory.
struct CheckedKernel {
    spec: KernelSpec,
    image: KernelImage,
    initrd_len: u64,
}

/// How a path appears in messages: as given, plus where it resolved to if relative.
pub(crate) fn show(given: &Path, resolved: &Path) -> String {
    if given.is_absolute() {
        format!("{given:?}")
    } else {
        format!("{given:?} (resolved to {resolved:?})")
    }
}

/// `given` made absolute against `base_dir`; `None` (reported) if empty.
pub(crate) fn resolve_path(
    given: &Path,
    base_dir: &Path,
    field: String,
    errors: &mut Errors,
) -> Option<PathBuf> {
    if given.as_os_str().is_empty() {
        errors.push(field, "must not be empty");
        return None;
    }
    Some(base_dir.join(given))
}

fn validate_kernel(
    kernel: Parsed<RawKernel>,
    naming: &Naming,
    ctx: Ctx<'_>,
    errors: &mut Errors,
) -> Option<CheckedKernel> {
    let raw = match kernel {
        Parsed::Ok(raw) => raw,
        Parsed::Failed => return None,
        Parsed::Absent => {
            errors.push(
                naming.at("kernel"),
                "required: an object with at least \"path\", the kernel image to boot",
            );
            return None;
        }
    };
    let before = errors.len();
    let field = naming.at("kernel.path");
    let probed = match &raw.path {
        None => {
            errors.push(field, "required");
            None
        }
        Some(given) => probe_file(
            given,
            field,
            ctx.base_dir,
            kernel_probe::probe_kernel,
            errors,
        ),
    };
    let initrd = raw.initrd.as_ref().and_then(|given| {
        let field = naming.at("kernel.initrd");
        probe_file(
            given,
            field,
            ctx.base_dir,
            kernel_probe::probe_initrd,
            errors,
        )
    });
    let cmdline = raw.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
    if let Err(message) = check_cmdline(&cmdline) {
        errors.push(naming.at("kernel.cmdline"), message);
    }
    let protocol = match raw.protocol {
        None | Some(RawProtocol::Auto) => BootProtocol::Auto,
        Some(RawProtocol::Linux) => BootProtocol::Linux,
        Some(RawProtocol::Pvh) => BootProtocol::Pvh,
    };
    if let (BootProtocol::Pvh, Some((path, image))) = (protocol, &probed) {
        let problem = match image.format {
            KernelFormat::Elf { pvh_entry: Some(_) } => None,
            KernelFormat::Elf { pvh_entry: None } => Some("has no PVH entry note"),
            KernelFormat::BzImage => {
                Some("is a bzImage, which has no PVH entry; use \"auto\" or \"linux\"")
            }
        };
        if let Some(problem) = problem {
            let message = format!("\"pvh\" but {path:?} {problem}");
            errors.push(naming.at("kernel.protocol"), message);
        }
    }
    let (path, image) = probed?;
    let (initrd, initrd_len) = initrd.map_or((None, 0), |(path, len)| (Some(path), len));
    (errors.len() == before).then_some(CheckedKernel {
        spec: KernelSpec {
            path,
            format: image.format,
            initrd,
            cmdline,
            protocol,
        },
        image,
        initrd_len,
    })
}

/// The file `given` (resolved against `base_dir`) and what `probe` found in
/// it; a problem is reported at `field`, naming the path.
fn probe_file<T, E: Display>(
    given: &Path,
    field: String,
    base_dir: &Path,
    probe: impl FnOnce(&Path) -> Result<T, E>,
    errors: &mut Errors,
) -> Option<(PathBuf, T)> {
    let path = resolve_path(given, base_dir, field.clone(), errors)?;
    match probe(&path) {
        Ok(found) => Some((path, found)),
        Err(e) => {
            errors.push(field, format!("{} {e}", show(given, &path)));
            None
        }
    }
}

/// Checks that `cmdline` is printable ASCII and not too long.
fn check_cmdline(cmdline: &str) -> Result<(), String> {
    if cmdline.len() > MAX_CMDLINE_LEN {
        return Err(format!(
            "{} bytes is longer than the maximum of {MAX_CMDLINE_LEN}",
            cmdline.len()
        ));
    }
    if let Some((at, byte)) = cmdline
        .bytes()
        .enumerate()
        .find(|(_, b)| !(b' '..=b'~').contains(b))
    {
        let kind = if byte.is_ascii() {
            "non-printable character"
        } else {
            "non-ASCII byte"
        };
        return Err(format!("contains a {kind} ({byte:#04x}) at byte {at}"));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct CheckedMemory {
    mib: u64,
    defaulted: bool,
    policy: MemorySpec,
}

fn validate_memory(
    memory: Parsed<RawMemory>,
    naming: &Naming,
    host: &HostInfo,
    errors: &mut Errors,
) -> Option<CheckedMemory> {
    let raw = memory.or_default()?;
    let mib = raw.size_mib.unwrap_or(DEFAULT_MEMORY_MIB);
    let field = naming.at("memory.size_mib");
    if mib < MIN_MEMORY_MIB {
        errors.push(
            field,
            format!("{mib} is below the minimum of {MIN_MEMORY_MIB} MiB"),
        );
        return None;
    }
    if let Some(total) = host.mem_total_mib {
        if mib > total {
            errors.push(
                field,
                format!("{mib} MiB is more than the host's {total} MiB of RAM"),
            );
            return None;
        }
    }
    if mib.checked_mul(MIB).is_none() {
        errors.push(field, format!("{mib} MiB is too large"));
        return None;
    }
    let policy = super::memory::validate_vm_memory(&raw, mib, naming, errors)?;
    Some(CheckedMemory {
        mib,
        defaulted: raw.size_mib.is_none(),
        policy,
    })
}

/// Checks that the kernel fits in the low RAM of a VM this size, and the
/// initrd above it and below [`INITRD_LIMIT_MIB`].
fn check_fits(
    kernel: &CheckedKernel,
    memory: &CheckedMemory,
    naming: &Naming,
    errors: &mut Errors,
) {
    let low_limit = LOW_RAM_LIMIT_MIB * MIB;
    let load_end = kernel.image.load_end;
    if load_end > low_limit {
        errors.push(
            naming.at("kernel.path"),
            format!(
                "{:?} loads up to {load_end:#x}, above the {LOW_RAM_LIMIT_MIB} MiB of low guest RAM a kernel must load into",
                kernel.spec.path
            ),
        );
        return;
    }
    let initrd_pages = kernel.initrd_len.div_ceil(PAGE).saturating_mul(PAGE);
    let needed = load_end.saturating_add(initrd_pages);
    let needed_mib = needed.div_ceil(MIB);
    let what = if kernel.spec.initrd.is_some() {
        "the kernel and initrd need"
    } else {
        "the kernel needs"
    };
    if kernel.spec.initrd.is_some() && needed > INITRD_LIMIT_MIB * MIB {
        errors.push(
            naming.at("kernel.initrd"),
            format!(
                "{what} {needed_mib} MiB of guest memory to load, but an initrd must end below {INITRD_LIMIT_MIB} MiB"
            ),
        );
    } else if needed > memory.mib.saturating_mul(MIB).min(low_limit) {
        let field = naming.at("memory.size_mib");
        let default = if memory.defaulted {
            " (the default)"
        } else {
            ""
        };
        errors.push(
            field.clone(),
            format!(
                "{what} {needed_mib} MiB of guest memory to load but {field} is {}{default}",
                memory.mib
            ),
        );
    }
}

fn validate_serial(
    serial: Parsed<RawSerial>,
    stdin: bool,
    naming: &Naming,
    base_dir: &Path,
    errors: &mut Errors,
) -> Option<SerialSpec> {
    let raw = serial.or_default()?;
    let output_field = naming.at("serial.output");
    let path_field = naming.at("serial.path");
    let output = match (raw.output.unwrap_or(RawSerialOutput::Stdout), &raw.path) {
        (RawSerialOutput::File, None) => {
            errors.push(
                path_field,
                format!("required when {output_field} is \"file\""),
            );
            return None;
        }
        (RawSerialOutput::File, Some(given)) => {
            let path = resolve_path(given, base_dir, path_field.clone(), errors)?;
            if let Err(message) = check_output_path(given, &path) {
                errors.push(path_field, message);
                return None;
            }
            SerialOutput::File(path)
        }
        (other, Some(given)) => {
            let output = if other == RawSerialOutput::Off {
                "off"
            } else {
                "stdout"
            };
            errors.push(
                path_field,
                format!(
                    "{given:?} is only used when {output_field} is \"file\" (it is \"{output}\")"
                ),
            );
            return None;
        }
        (RawSerialOutput::Stdout, None) => SerialOutput::Stdout,
        (RawSerialOutput::Off, None) => SerialOutput::Off,
    };
    Some(SerialSpec { output, stdin })
}

/// Checks that a serial output file can be created: its directory exists and
/// the path is not itself a directory.
fn check_output_path(given: &Path, path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!("{} is a directory", show(given, path)));
    }
    let Some(dir) = path.parent() else {
        return Err(format!("{} has no parent directory", show(given, path)));
    };
    if !dir.exists() {
        return Err(format!(
            "directory {dir:?} does not exist (needed for {})",
            show(given, path)
        ));
    }
    if !dir.is_dir() {
        return Err(format!(
            "{dir:?} is not a directory (needed for {})",
            show(given, path)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_read_in_mib() {
        let text = "MemTotal:       24683656 kB\nMemFree:        1000 kB\n";
        assert_eq!(parse_meminfo_total_mib(text), Some(24683656 / 1024));
        assert_eq!(parse_meminfo_total_mib("MemFree: 1 kB"), None);
        assert_eq!(parse_meminfo_total_mib("MemTotal: lots"), None);
    }

    #[test]
    fn names() {
        assert!(is_valid_name("web-1_a"));
        assert!(is_valid_name(&"a".repeat(32)));
        assert!(!is_valid_name(&"a".repeat(33)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("bad name!"));
        assert!(!is_valid_name("é"));
    }

    #[test]
    fn cmdline_checks() {
        assert!(check_cmdline(DEFAULT_CMDLINE).is_ok());
        assert_eq!(
            check_cmdline("console=ttyS0\u{7}").expect_err("must fail"),
            "contains a non-printable character (0x07) at byte 13"
        );
        assert_eq!(
            check_cmdline("a=é").expect_err("must fail"),
            "contains a non-ASCII byte (0xc3) at byte 2"
        );
        assert!(check_cmdline(&"x".repeat(MAX_CMDLINE_LEN)).is_ok());
        assert_eq!(
            check_cmdline(&"x".repeat(3000)).expect_err("must fail"),
            "3000 bytes is longer than the maximum of 2047"
        );
    }

    #[test]
    fn flag_naming() {
        let flags = Naming::Flags;
        assert_eq!(flags.at("cpu.vcpus"), "--vcpus");
        assert_eq!(flags.at("memory.size_mib"), "--memory");
        assert_eq!(flags.at("kernel.path"), "--kernel");
        assert_eq!(
            Naming::Json("vms[2]".into()).at("cpu.vcpus"),
            "vms[2].cpu.vcpus"
        );
        assert_eq!(Naming::Json(String::new()).at("cpu.vcpus"), "cpu.vcpus");
    }
}
