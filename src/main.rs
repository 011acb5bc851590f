//! The `hearth` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use log::LevelFilter;

use hearth::config::{self, MonitorSpec, VmFlags};
use hearth::monitor;

mod ctl;
mod firecracker_cmd;

/// Exit status when every VM reset or powered off (or the user quit).
const EXIT_OK: u8 = 0;
/// Exit status for a bad configuration or a monitor that could not start.
const EXIT_CONFIG: u8 = 1;
/// Exit status when a guest failed (emulation failure, triple fault, KVM error).
const EXIT_GUEST_FAILED: u8 = 3;

#[derive(Parser)]
#[command(
    name = "hearth",
    version,
    about = "A KVM microVM monitor that hosts many VMs and shares the host fairly between them"
)]
struct Cli {
    /// Log level: error, warn, info, debug or trace (also HEARTH_LOG).
    #[arg(long, global = true, env = "HEARTH_LOG", default_value = "info")]
    log_level: LevelFilter,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot VMs from a config file, or one VM from flags.
    Run(RunArgs),
    /// Check a config file without touching KVM.
    Validate {
        /// The JSON config file.
        file: PathBuf,
    },
    /// Print a config file (a Firecracker one too) in Hearth's own format.
    Convert {
        /// The JSON config file.
        file: PathBuf,
    },
    /// Send one request to a running monitor's control socket and print
    /// the reply (exit status 1 on an error reply).
    Ctl(ctl::CtlArgs),
    /// Run a monitor as a service: VMs are created, started, stopped and
    /// deleted through its control socket while it runs; it stops on a
    /// `shutdown` request, SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Run one VM as the `firecracker` binary does: configured and started
    /// through Firecracker's REST API on --api-sock (or booted from
    /// --config-file), ending when the VM ends.
    Firecracker(firecracker_cmd::FirecrackerArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// The control socket (mode 0600; the monitor's own user is admin
    /// unless the monitor file's host.api says otherwise).
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// A monitor file: its host policy, and VMs to start at once (its
    /// "vms" may be empty).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Rewrite this file with per-VM statistics (JSON) every second.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Turn the per-thread seccomp filters off (for debugging).
    #[arg(long)]
    no_seccomp: bool,
    /// Jail the monitor once its VMs are built (empty root, own namespaces,
    /// no capabilities): as this user (default nobody) unless host.sandbox says.
    #[arg(long, num_args = 0..=1, default_missing_value = "nobody", value_name = "USER")]
    sandbox: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    /// JSON config file (one VM, or a monitor file with several).
    #[arg(long, short, conflicts_with_all = ["kernel", "initrd", "cmdline", "vcpus", "memory", "name"])]
    config: Option<PathBuf>,
    /// Kernel image: ELF vmlinux (PVH or 64-bit Linux entry) or bzImage.
    #[arg(long, required_unless_present = "config")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long)]
    vcpus: Option<u64>,
    /// Guest memory in MiB.
    #[arg(long)]
    memory: Option<u64>,
    /// VM name.
    #[arg(long)]
    name: Option<String>,
    /// Rewrite this file with per-VM statistics (JSON) every second.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Serve the control API on this Unix socket (mode 0600; the monitor's
    /// own user is admin unless the config file's host.api says otherwise).
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// Turn the per-thread seccomp filters off (for debugging).
    #[arg(long)]
    no_seccomp: bool,
    /// Jail the monitor once its VMs are built (empty root, own namespaces,
    /// no capabilities): as this user (default nobody) unless host.sandbox says.
    #[arg(long, num_args = 0..=1, default_missing_value = "nobody", value_name = "USER")]
    sandbox: Option<String>,
}

fn report_config_errors(errors: &config::ConfigErrors) {
    for line in errors.to_string().lines() {
        eprintln!("hearth: error: {line}");
    }
}

/// The control socket `--api-socket` names, unless the file's `host.api`
/// gives one (the flag then only moves it).
fn set_api_socket(spec: &mut MonitorSpec, socket: Option<PathBuf>) {
    if let Some(socket) = socket {
        let socket = std::path::absolute(&socket).unwrap_or(socket);
        match &mut spec.host.api {
            Some(api) => api.socket = socket,
            None => {
                spec.host.api = Some(config::ApiSpec::owner_only(socket, config::own_uid()));
            }
        }
    }
}

/// `--sandbox [USER]`: the sandbox of that user, unless the file's
/// host.sandbox already says.
fn set_sandbox(spec: &mut MonitorSpec, user: Option<String>) -> Result<(), ExitCode> {
    let Some(user) = user else { return Ok(()) };
    if spec.host.sandbox.is_some() {
        return Ok(());
    }
    match config::sandbox_user(&user) {
        Some(jail) => {
            spec.host.sandbox = Some(jail);
            Ok(())
        }
        None => {
            eprintln!("hearth: error: --sandbox: no user {user:?} on this host");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let parsed = match &args.config {
        Some(file) => config::load_serve_file(file),
        None => Ok(MonitorSpec {
            vms: Vec::new(),
            host: config::HostSpec::default(),
        }),
    };
    let common = Common {
        api_socket: args.api_socket,
        sandbox: args.sandbox,
        no_seccomp: args.no_seccomp,
        stats_file: args.stats_file,
    };
    run_monitor(parsed, common, true)
}

/// What `run` and `serve` both take besides the VMs.
struct Common {
    api_socket: Option<PathBuf>,
    sandbox: Option<String>,
    no_seccomp: bool,
    stats_file: Option<PathBuf>,
}

/// Runs a parsed monitor file (or reports why it is not one) with the
/// flags both `run` and `serve` take.
fn run_monitor(
    parsed: Result<MonitorSpec, config::ConfigErrors>,
    common: Common,
    serve: bool,
) -> ExitCode {
    let mut spec = match parsed {
        Ok(spec) => spec,
        Err(errors) => {
            report_config_errors(&errors);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    set_api_socket(&mut spec, common.api_socket);
    if let Err(code) = set_sandbox(&mut spec, common.sandbox) {
        return code;
    }
    if common.no_seccomp {
        spec.host.seccomp = false;
    }
    let opts = monitor::RunOptions {
        stats_file: common.stats_file,
        serve,
        ..Default::default()
    };
    finish(monitor::run(&spec, &opts))
}

fn run(args: RunArgs) -> ExitCode {
    let parsed = match &args.config {
        Some(file) => config::load_file(file),
        None => config::from_flags(&VmFlags {
            kernel: args.kernel,
            initrd: args.initrd,
            cmdline: args.cmdline,
            vcpus: args.vcpus,
            memory_mib: args.memory,
            name: args.name,
        }),
    };
    let common = Common {
        api_socket: args.api_socket,
        sandbox: args.sandbox,
        no_seccomp: args.no_seccomp,
        stats_file: args.stats_file,
    };
    run_monitor(parsed, common, false)
}

/// The exit status of a run, after its summary.
fn finish(result: Result<monitor::MonitorReport, monitor::MonitorError>) -> ExitCode {
    match result {
        Ok(report) => {
            if report.vms.len() > 1 {
                let total: u64 = report.vms.iter().map(|r| r.cpu_ns).sum();
                log::info!("summary of {} VMs:", report.vms.len());
                for r in &report.vms {
                    let share = if total > 0 {
                        r.cpu_ns as f64 * 100.0 / total as f64
                    } else {
                        0.0
                    };
                    log::info!(
                        "  {:<16} CPU {:8.3} s {:5.1} %  throttled {:5}  exits {:9}  {}",
                        r.name,
                        r.cpu_ns as f64 / 1e9,
                        share,
                        r.throttle_events,
                        r.exits.total(),
                        r.outcome
                    );
                }
            }
            if let Some(kib) = report.peak_rss_kib {
                log::debug!("peak RSS {:.1} MiB", kib as f64 / 1024.0);
            }
            if let Some(sig) = report.signal {
                return ExitCode::from(128u8.saturating_add(sig as u8));
            }
            if report.vms.iter().any(|r| r.outcome.is_guest_failure()) {
                ExitCode::from(EXIT_GUEST_FAILED)
            } else {
                ExitCode::from(EXIT_OK)
            }
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn main() -> ExitCode {
    hearth::mark_start();
    // The process ends with its monitor: stopped vCPU threads may be left to its exit.
    hearth::process::allow_linger();
    let cli = Cli::parse();
    hearth::logger::init(cli.log_level);
    match cli.command {
        Command::Run(args) => run(args),
        Command::Serve(args) => serve(args),
        Command::Firecracker(args) => match firecracker_cmd::plan(args) {
            Ok((spec, opts)) => finish(monitor::run(&spec, &opts)),
            Err(code) => code,
        },
        Command::Ctl(args) => ctl::main(args),
        Command::Convert { file } => match config::convert_file(&file) {
            Ok(json) => {
                ctl::emit(&json);
                ExitCode::from(EXIT_OK)
            }
            Err(errors) => {
                report_config_errors(&errors);
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Validate { file } => match config::load_file(&file) {
            Ok(spec) => {
                let names: Vec<&str> = spec.vms.iter().map(|v| v.name.as_str()).collect();
                println!(
                    "{}: valid ({} VM: {})",
                    file.display(),
                    names.len(),
                    names.join(", ")
                );
                ExitCode::from(EXIT_OK)
            }
            Err(errors) => {
                report_config_errors(&errors);
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}
