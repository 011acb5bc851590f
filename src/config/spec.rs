//! Validated, typed VM specifications: the output of config validation and
//! the only input the builder accepts. Nothing here touches KVM.

use std::path::PathBuf;

/// Everything one `hearth` process runs: its VMs and (later) host-wide policy.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSpec {
    pub vms: Vec<VmSpec>,
    pub host: HostSpec,
}

/// Host-wide policy (`host` in a monitor file).
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    /// `host.cpu.cpus`: the host CPUs every vCPU thread may run on (their
    /// affinity); `None` leaves them free to run anywhere.
    pub cpus: Option<Vec<usize>>,
    /// `host.cpu.tick_ms`: how often the CPU scheduler looks at usage.
    pub sched_tick_ms: u32,
    /// `host.cpu.scheduler`: whether the proportional scheduler runs
    /// (default true); off, the host's scheduler alone shares the CPUs, for
    /// comparison.
    pub scheduler: bool,
    /// `host.cpu.realtime`: the event loop, which serves the scheduler's
    /// ticks, runs SCHED_FIFO when the host allows it (default true).
    pub realtime_loop: bool,
    /// `host.api`: the control socket and who may use it; `None`: no socket.
    pub api: Option<ApiSpec>,
    /// `host.seccomp`: per-thread system call filters (default on).
    pub seccomp: bool,
    /// `host.memory`: the memory budget the ballooning allocator shares
    /// between the VMs; `None` leaves every VM its whole RAM.
    pub memory: Option<HostMemorySpec>,
    /// `host.io`: the disk bandwidth/IOPS budget shared by `io.weight`.
    pub io: Option<HostShareSpec>,
    /// `host.net`: the network budget shared by `net.weight`.
    pub net: Option<HostShareSpec>,
    /// `host.sandbox` (or `--sandbox`): jail the monitor after start-up.
    pub sandbox: Option<SandboxSpec>,
}

/// `host.memory`: the host-wide memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemorySpec {
    /// `host.memory.budget_mib`: what all the VMs together may hold.
    pub budget_mib: u64,
    /// `host.memory.tick_ms`: how often the allocator looks at the guests.
    pub tick_ms: u32,
}

impl Default for HostSpec {
    fn default() -> Self {
        HostSpec {
            cpus: None,
            sched_tick_ms: DEFAULT_SCHED_TICK_MS,
            scheduler: true,
            realtime_loop: true,
            api: None,
            seccomp: true,
            memory: None,
            io: None,
            net: None,
            sandbox: None,
        }
    }
}

/// The control socket (`host.api`, or `--api-socket`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSpec {
    /// Absolute path of the Unix socket.
    pub socket: PathBuf,
    /// Permission bits of the socket file (the first gate; the ACL is the second).
    pub mode: u32,
    /// Who may do what; a client no entry names is refused everything.
    pub acl: Vec<AclEntry>,
}

impl ApiSpec {
    /// A socket at `socket` with mode 0600 where only `uid` (the monitor's
    /// own user) is admin: the default for `--api-socket`.
    pub fn owner_only(socket: PathBuf, uid: u32) -> Self {
        ApiSpec {
            socket,
            mode: DEFAULT_API_MODE,
            acl: vec![AclEntry {
                who: Principal::Uid(uid),
                vms: None,
                grant: Grant::Admin,
            }],
        }
    }
}

/// One entry of `host.api.acl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    pub who: Principal,
    /// The VMs the grant covers; `None`: every VM.
    pub vms: Option<Vec<String>>,
    pub grant: Grant,
}

/// Whom an ACL entry names, as the kernel reports a peer (SO_PEERCRED);
/// user and group names are resolved when the config is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Uid(u32),
    /// Matches the peer's primary (effective) gid only.
    Gid(u32),
}

/// What an ACL entry allows; each grant includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grant {
    /// list, stats, access counters.
    Read,
    /// read, plus pause, resume, stop, CPU and memory settings.
    Control,
    /// control of every VM, plus monitor-wide operations (shutdown).
    Admin,
}

impl Grant {
    pub fn name(self) -> &'static str {
        match self {
            Grant::Read => "read",
            Grant::Control => "control",
            Grant::Admin => "admin",
        }
    }
}

/// Default permission bits of the control socket.
pub const DEFAULT_API_MODE: u32 = 0o600;

/// A VM's CPU policy (`cpu` section, beside `cpu.vcpus`).
#[derive(Debug, Clone, PartialEq)]
pub struct CpuSpec {
    /// `cpu.weight`: relative share of CPU time under contention, 1..=10000.
    pub weight: u32,
    /// `cpu.max`: a cap, in physical CPUs (0.5 = half of one CPU), whatever
    /// the contention; `None` = no cap. Greater than 0, at most `vcpus`.
    pub max: Option<f64>,
}

impl Default for CpuSpec {
    fn default() -> Self {
        CpuSpec {
            weight: DEFAULT_CPU_WEIGHT,
            max: None,
        }
    }
}

/// A VM's memory policy (`memory` section, beside `memory.size_mib`), in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySpec {
    /// `memory.floor_mib`: the allocator never takes the VM below this.
    pub floor_mib: u64,
    /// `memory.ceiling_mib`: never above this (at most `size_mib`).
    pub ceiling_mib: u64,
    /// `memory.weight`: relative share of the budget above the floors.
    pub weight: u32,
    /// `memory.balloon`: whether the VM gets a virtio-balloon device.
    pub balloon: BalloonMode,
    pub balloon_options: BalloonOptions,
    /// `memory.prefault`: touch all guest RAM at start (the host backs it
    /// at once, as QEMU's `-mem-prealloc`), so that RSS starts at the full size.
    pub prefault: bool,
}

/// Whether a VM has a balloon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalloonMode {
    /// Not said: a balloon when the host has a memory budget.
    Auto,
    On,
    Off,
}

/// How a VM's balloon behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonOptions {
    /// `memory.balloon_mib`: a fixed balloon size (without a budget).
    pub target_mib: Option<u64>,
    /// `memory.deflate_on_oom`: the guest may deflate when it runs out of memory.
    pub deflate_on_oom: bool,
    /// `memory.stats_interval_s`: how often to ask the guest for its
    /// statistics when no budget needs them every tick; 0 = no statistics queue.
    pub stats_interval_s: u32,
    /// `memory.free_page_reporting`: free pages the guest reports go back
    /// to the host (VIRTIO_BALLOON_F_PAGE_REPORTING).
    pub free_page_reporting: bool,
}

impl MemorySpec {
    /// The policy of a VM of `size_mib` that says nothing about it.
    pub fn defaults(size_mib: u64) -> Self {
        MemorySpec {
            floor_mib: default_floor_mib(size_mib),
            ceiling_mib: size_mib,
            weight: DEFAULT_MEMORY_WEIGHT,
            balloon: BalloonMode::Auto,
            balloon_options: BalloonOptions {
                target_mib: None,
                deflate_on_oom: true,
                stats_interval_s: DEFAULT_STATS_INTERVAL_S,
                free_page_reporting: true,
            },
            prefault: false,
        }
    }

    /// Whether the VM gets a balloon device under `host`.
    pub fn has_balloon(&self, host: &HostSpec) -> bool {
        match self.balloon {
            BalloonMode::On => true,
            BalloonMode::Off => false,
            BalloonMode::Auto => host.memory.is_some(),
        }
    }
}

/// `memory.floor_mib` when not given: a quarter of the ceiling, at least
/// [`MIN_MEMORY_MIB`] (or the whole ceiling when it is smaller).
pub fn default_floor_mib(ceiling_mib: u64) -> u64 {
    (ceiling_mib / 4).max(MIN_MEMORY_MIB).min(ceiling_mib)
}

/// Default and range of `memory.weight`.
pub const DEFAULT_MEMORY_WEIGHT: u32 = 100;
/// Default and range of `host.memory.tick_ms`.
pub const DEFAULT_MEMORY_TICK_MS: u32 = 1000;
pub const MIN_MEMORY_TICK_MS: u32 = 10;
pub const MAX_MEMORY_TICK_MS: u32 = 60_000;
/// Default and largest `memory.stats_interval_s`.
pub const DEFAULT_STATS_INTERVAL_S: u32 = 1;
pub const MAX_STATS_INTERVAL_S: u32 = 3600;

/// Default and range of `cpu.weight` (as cgroup v2's cpu.weight).
pub const DEFAULT_CPU_WEIGHT: u32 = 100;
pub const MIN_CPU_WEIGHT: u32 = 1;
pub const MAX_CPU_WEIGHT: u32 = 10_000;
/// Default and range of `host.cpu.tick_ms`.
pub const DEFAULT_SCHED_TICK_MS: u32 = 10;
pub const MIN_SCHED_TICK_MS: u32 = 1;
pub const MAX_SCHED_TICK_MS: u32 = 1000;

/// One validated VM definition.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    /// Unique within the monitor: `[A-Za-z0-9_-]{1,32}`.
    pub name: String,
    /// Number of vCPUs, 1..=MAX_VCPUS.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    pub memory: MemorySpec,
    pub kernel: KernelSpec,
    pub serial: SerialSpec,
    pub cpu: CpuSpec,
    /// `acl`: the device access control list (see `config/acl.rs`).
    pub acl: super::AclSpec,
    /// `drives`: virtio-blk devices, in the order the guest sees them
    /// (the root drive first).
    pub drives: Vec<DriveSpec>,
    /// `net`: virtio-net interfaces.
    pub net: Vec<NetSpec>,
    /// `vsock`: the virtio-vsock device.
    pub vsock: Option<VsockSpec>,
    /// `io.weight`: the VM's share of `host.io`.
    pub io: ShareSpec,
    /// `net.weight`: the VM's share of `host.net`.
    pub net_share: ShareSpec,
}

/// How to load and enter the kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelSpec {
    /// Absolute path, checked readable and of a known format at validation.
    pub path: PathBuf,
    /// Format found when validating (re-checked when loading).
    pub format: KernelFormat,
    pub initrd: Option<PathBuf>,
    /// The command line as given (or the default), without Hearth's additions.
    pub cmdline: String,
    pub protocol: BootProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF vmlinux; `pvh_entry` is set when it carries a PVH (XEN_ELFNOTE_PHYS32_ENTRY) note.
    Elf { pvh_entry: Option<u32> },
    /// bzImage with the Linux x86 boot protocol header.
    BzImage,
}

/// Which entry point to use for an ELF kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH when the ELF has the note, else the 64-bit Linux boot protocol.
    Auto,
    /// 64-bit Linux boot protocol: long mode at the ELF entry, rsi = boot_params.
    Linux,
    /// PVH: 32-bit protected mode at the note's entry, ebx = hvm_start_info.
    Pvh,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SerialSpec {
    pub output: SerialOutput,
    /// Whether the monitor's stdin is fed to this VM's serial port.
    pub stdin: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SerialOutput {
    Stdout,
    File(PathBuf),
    Off,
}

/// Largest vCPU count: APIC IDs are 8-bit in the MP table and one ID goes to the IOAPIC.
pub const MAX_VCPUS: u8 = 254;
/// Smallest guest RAM accepted.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Default command line when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// Longest command line accepted: the Linux x86 boot protocol's default COMMAND_LINE_SIZE (2048) less the terminating NUL.
pub const MAX_CMDLINE_LEN: usize = 2047;
/// vCPU count when none is given.
pub const DEFAULT_VCPUS: u8 = 1;
/// Guest RAM in MiB when none is given.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// Guest RAM is mapped from 0 up to this many MiB (3 GiB); any more starts at
/// 4 GiB, above the 32-bit MMIO hole. Kernel and initrd must load below it.
pub const LOW_RAM_LIMIT_MIB: u64 = crate::layout::MMIO_GAP_START / crate::layout::MIB;
/// Name of a single-VM file's VM when none is given; in a monitor file the
/// default is `vm<index>`.
pub const DEFAULT_VM_NAME: &str = "vm0";
/// An initrd must end below this many MiB (the Linux boot protocol's default
/// `initrd_addr_max`, 0x37ffffff); it is placed at the top of the RAM below it.
pub const INITRD_LIMIT_MIB: u64 = (crate::layout::INITRD_ADDR_MAX + 1) / crate::layout::MIB;

// ---------------------------------------------------------------------------
// Disks, network, vsock, I/O shares and the sandbox (the spec types the
// builder and the devices read; parsing, defaults and validation are in
// the config modules).
// ---------------------------------------------------------------------------

/// One token bucket (Firecracker's `TokenBucket`): `size` tokens refill
/// over `refill_time_ms`; `one_time_burst` extra tokens are spent first and
/// never refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucketSpec {
    /// Bucket capacity (bytes for bandwidth, operations for ops). > 0.
    pub size: u64,
    /// An initial burst beyond `size` that does not refill (0 = none).
    pub one_time_burst: u64,
    /// Time to refill an empty bucket completely, in ms. > 0.
    pub refill_time_ms: u64,
}

/// A rate limiter: a bandwidth bucket (bytes) and/or an ops bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimiterSpec {
    pub bandwidth: Option<TokenBucketSpec>,
    pub ops: Option<TokenBucketSpec>,
}

/// `drives[].cache`: what a guest's flush means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Flush requests succeed without syncing (Firecracker's `Unsafe`, its default).
    Unsafe,
    /// Flush requests `fdatasync` the backing file (Firecracker's `Writeback`).
    Writeback,
}

/// `drives[].engine`: how the device does its I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEngine {
    /// `pread`/`pwrite` on the VM's device thread (Firecracker's `Sync`).
    Sync,
    /// io_uring, completions through an eventfd (Firecracker's `Async`).
    IoUring,
}

/// One virtio-blk drive (`drives[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    /// Unique within the VM: `[A-Za-z0-9_-]{1,32}`; also the virtio-blk
    /// serial the guest reads with GET_ID (truncated to 20 bytes).
    pub id: String,
    /// Absolute path of a raw image file or a host block device.
    pub path: PathBuf,
    pub read_only: bool,
    /// `root`: the guest's root device (`root=/dev/vdX`, or
    /// `root=PARTUUID=...` with `partuuid`); at most one per VM, and it
    /// gets the first block slot (so it is `/dev/vda`).
    pub root: bool,
    pub partuuid: Option<String>,
    pub cache: CacheMode,
    pub engine: IoEngine,
    pub rate_limiter: RateLimiterSpec,
}

/// One virtio-net interface (`net[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// Unique within the VM: `[A-Za-z0-9_-]{1,32}`.
    pub id: String,
    /// `tap`: the host tap device's name (Firecracker's `host_dev_name`);
    /// it must exist (it is opened with TUNSETIFF, IFF_TAP|IFF_NO_PI|IFF_VNET_HDR).
    pub tap: String,
    /// The guest's MAC; when not configured, a locally administered one
    /// derived from the VM name and the interface id (stable across runs).
    pub mac: [u8; 6],
    /// `VIRTIO_NET_F_MTU` when set (68..=65535).
    pub mtu: Option<u16>,
    pub rx_rate_limiter: RateLimiterSpec,
    pub tx_rate_limiter: RateLimiterSpec,
}

/// The VM's vsock device (`vsock`), Firecracker's hybrid design.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    /// The guest's context id, >= 3 (0-2 are reserved).
    pub guest_cid: u32,
    /// Absolute path of the host-side Unix socket (created by the monitor).
    pub uds_path: PathBuf,
}

/// A VM's share of host-wide I/O (`io` or `net` section of a VM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareSpec {
    /// Relative share under contention, 1..=10000 (default 100).
    pub weight: u32,
}

impl Default for ShareSpec {
    fn default() -> Self {
        ShareSpec {
            weight: DEFAULT_IO_WEIGHT,
        }
    }
}

/// A host-wide budget shared by weight (`host.io` for disks, `host.net`
/// for network interfaces). At least one of the two limits is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostShareSpec {
    /// Bytes per second all VMs together may move.
    pub bytes_per_s: Option<u64>,
    /// Operations (requests or frames) per second all VMs together may do.
    pub ops_per_s: Option<u64>,
    /// How often the share policy re-divides the budget.
    pub tick_ms: u32,
}

/// Default and range of `io.weight` and `net.weight`.
pub const DEFAULT_IO_WEIGHT: u32 = 100;
pub const MIN_IO_WEIGHT: u32 = 1;
pub const MAX_IO_WEIGHT: u32 = 10_000;
/// Default and range of `host.io.tick_ms` / `host.net.tick_ms`.
pub const DEFAULT_SHARE_TICK_MS: u32 = 10;
pub const MIN_SHARE_TICK_MS: u32 = 1;
pub const MAX_SHARE_TICK_MS: u32 = 1000;
/// Range of `vsock.guest_cid`: 0-2 are reserved, and `u32::MAX` is
/// `VMADDR_CID_ANY`.
pub const MIN_GUEST_CID: u32 = 3;
pub const MAX_GUEST_CID: u32 = u32::MAX - 1;

/// `host.sandbox`: what the monitor drops to once everything is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The uid and gid to drop to (default: the `nobody` user's).
    pub uid: u32,
    pub gid: u32,
}
