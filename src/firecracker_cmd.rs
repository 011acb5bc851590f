//! `hearth firecracker`: the `firecracker` binary's command line for one VM.
//! With `--api-sock` the monitor serves Firecracker's REST API there and
//! ends when the VM it started ends; `--no-api --config-file F` boots F at
//! once, as `hearth run --config F` does.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use hearth::config::{self, MonitorSpec};
use hearth::fcapi::FirecrackerOptions;
use hearth::monitor::RunOptions;

#[derive(Args)]
pub struct FirecrackerArgs {
    /// The API socket (created with mode 0600; the file must not exist,
    /// unless it is a socket left by a process that died).
    #[arg(long, default_value = "/run/firecracker.socket")]
    api_sock: PathBuf,
    /// A Firecracker config file (or any Hearth config with one VM) booted
    /// at once; with the API, the API then serves that VM.
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Serve no API: boot --config-file and run until the VM ends.
    #[arg(long, requires = "config_file")]
    no_api: bool,
    /// The microVM's id, reported by `GET /` (and its name in the monitor's
    /// logs when it is a valid VM name, `[A-Za-z0-9_-]{1,32}`).
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    /// Rewrite this file with the VM's statistics (JSON) every second.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Turn the per-thread seccomp filters off (for debugging).
    #[arg(long)]
    no_seccomp: bool,
}

/// The monitor run `args` ask for, or the exit status of a bad command line
/// or config (already reported).
pub fn plan(args: FirecrackerArgs) -> Result<(MonitorSpec, RunOptions), ExitCode> {
    let mut spec = match &args.config_file {
        Some(file) => config::load_file(file).map_err(|errors| {
            for line in errors.to_string().lines() {
                eprintln!("hearth: error: {line}");
            }
            ExitCode::from(1)
        })?,
        None => MonitorSpec {
            vms: Vec::new(),
            host: config::HostSpec::default(),
        },
    };
    if spec.vms.len() > 1 {
        eprintln!(
            "hearth: error: --config-file: hearth firecracker runs one VM; the file has {}",
            spec.vms.len()
        );
        return Err(ExitCode::from(1));
    }
    if args.no_seccomp {
        spec.host.seccomp = false;
    }
    let mut opts = RunOptions {
        stats_file: args.stats_file,
        ..RunOptions::default()
    };
    if args.no_api {
        return Ok((spec, opts));
    }
    let vm_name = if hearth::fcapi::valid_name(&args.id) {
        args.id.clone()
    } else {
        config::DEFAULT_VM_NAME.to_string()
    };
    if let Some(vm) = spec.vms.first_mut() {
        vm.name = vm_name.clone();
    }
    let base_dir = std::env::current_dir().map_err(|e| {
        eprintln!("hearth: error: the current directory: {e}");
        ExitCode::from(1)
    })?;
    let booted_from = args
        .config_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|text| serde_json::from_str(&text).ok());
    opts.serve = true;
    opts.firecracker = Some(FirecrackerOptions {
        api_sock: std::path::absolute(&args.api_sock).unwrap_or(args.api_sock),
        id: args.id,
        vm_name,
        base_dir,
        booted_from,
    });
    Ok((spec, opts))
}
