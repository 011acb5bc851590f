//! `hearth ctl SOCKET COMMAND ...`: one request to a running monitor.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args)]
pub struct CtlArgs {
    /// The monitor's control socket.
    socket: PathBuf,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// The VMs you may see: name, state, vCPUs.
    List,
    /// Statistics of one VM, or of every VM you may see.
    Stats { vm: Option<String> },
    /// Pause every vCPU of a VM.
    Pause { vm: String },
    /// Resume a paused VM.
    Resume { vm: String },
    /// Stop a VM.
    Stop { vm: String },
    /// Set a VM's CPU weight (1-10000).
    SetWeight { vm: String, weight: u64 },
    /// Set a VM's CPU cap in host CPUs (0.5 = half of one), or "none".
    SetMax { vm: String, max: String },
    /// Set a VM's memory weight and/or floor.
    SetMemory {
        vm: String,
        #[arg(long)]
        weight: Option<u64>,
        #[arg(long)]
        floor_mib: Option<u64>,
    },
    /// Change a network interface's rate limiters (Firecracker's PATCH of
    /// an interface): --rx/--tx take a limiter as JSON, e.g.
    /// '{"bandwidth": {"size": 1000000, "refill_time": 100}, "ops": null}'
    /// (a bucket left out is kept, null removes it).
    SetNet {
        vm: String,
        iface: String,
        #[arg(long)]
        rx: Option<String>,
        #[arg(long)]
        tx: Option<String>,
    },
    /// Set a VM's io.weight (1-10000): its share of host.io.
    SetIo { vm: String, weight: u64 },
    /// Change a drive's rate limiter (Firecracker's PATCH /drives): each
    /// bucket SIZE:REFILL_MS[:ONE_TIME_BURST], or "none" to remove it.
    SetDrive {
        vm: String,
        drive: String,
        #[arg(long)]
        bandwidth: Option<String>,
        #[arg(long)]
        ops: Option<String>,
    },
    /// The device-access verifier's counters of a VM.
    Counters { vm: String },
    /// The statistics of the VMs you may see as Prometheus text (printed
    /// as is, for a node exporter's textfile collector or a scraper).
    Metrics,
    /// Stop every VM (the monitor exits).
    Shutdown,
    /// Add a VM from a definition file (Hearth's JSON for one VM; relative
    /// paths resolve against the file's directory). Waits until it is built.
    Create {
        file: PathBuf,
        /// Start it once built.
        #[arg(long)]
        start: bool,
    },
    /// Start a created VM.
    Start { vm: String },
    /// Stop a VM if it runs, then forget it (waits until it is gone).
    Delete { vm: String },
    /// Stop a VM if it runs, then build and start it again (waits until it runs).
    Restart { vm: String },
    /// Send a raw JSON request line.
    Request { json: String },
}

fn request(command: CtlCommand) -> Result<Value, String> {
    Ok(match command {
        CtlCommand::List => json!({"op": "list"}),
        CtlCommand::Stats { vm } => match vm {
            Some(vm) => json!({"op": "stats", "vm": vm}),
            None => json!({"op": "stats"}),
        },
        CtlCommand::Pause { vm } => json!({"op": "pause", "vm": vm}),
        CtlCommand::Resume { vm } => json!({"op": "resume", "vm": vm}),
        CtlCommand::Stop { vm } => json!({"op": "stop", "vm": vm}),
        CtlCommand::SetWeight { vm, weight } => {
            json!({"op": "set-cpu", "vm": vm, "weight": weight})
        }
        CtlCommand::SetMax { vm, max } => {
            let max: Value = if max == "none" {
                Value::Null
            } else {
                json!(max
                    .parse::<f64>()
                    .map_err(|_| format!("max {max:?} is neither a number nor \"none\""))?)
            };
            json!({"op": "set-cpu", "vm": vm, "max": max})
        }
        CtlCommand::SetMemory {
            vm,
            weight,
            floor_mib,
        } => {
            let mut r = json!({"op": "set-memory", "vm": vm});
            if let Some(w) = weight {
                r["weight"] = json!(w);
            }
            if let Some(f) = floor_mib {
                r["floor_mib"] = json!(f);
            }
            r
        }
        CtlCommand::SetNet { vm, iface, rx, tx } => {
            let mut r = json!({"op": "set-net", "vm": vm, "iface": iface});
            for (key, text) in [("rx_rate_limiter", rx), ("tx_rate_limiter", tx)] {
                if let Some(text) = text {
                    r[key] =
                        serde_json::from_str(&text).map_err(|e| format!("{key}: not JSON: {e}"))?;
                }
            }
            r
        }
        CtlCommand::SetIo { vm, weight } => json!({"op": "set-io", "vm": vm, "weight": weight}),
        CtlCommand::SetDrive {
            vm,
            drive,
            bandwidth,
            ops,
        } => {
            let mut limiter = json!({});
            if let Some(b) = bandwidth {
                limiter["bandwidth"] = bucket(&b)?;
            }
            if let Some(o) = ops {
                limiter["ops"] = bucket(&o)?;
            }
            json!({"op": "set-drive", "vm": vm, "drive": drive, "rate_limiter": limiter})
        }
        CtlCommand::Counters { vm } => json!({"op": "access-counters", "vm": vm}),
        CtlCommand::Metrics => json!({"op": "metrics"}),
        CtlCommand::Shutdown => json!({"op": "shutdown"}),
        CtlCommand::Create { file, start } => create_request(&file, start)?,
        CtlCommand::Start { vm } => json!({"op": "start", "vm": vm}),
        CtlCommand::Delete { vm } => json!({"op": "delete", "vm": vm}),
        CtlCommand::Restart { vm } => json!({"op": "restart", "vm": vm}),
        CtlCommand::Request { json } => {
            serde_json::from_str(&json).map_err(|e| format!("not JSON: {e}"))?
        }
    })
}

/// A bucket given as `SIZE:REFILL_MS[:ONE_TIME_BURST]`, or `none`.
fn bucket(text: &str) -> Result<Value, String> {
    if text == "none" {
        return Ok(Value::Null);
    }
    let bad = || format!("bucket {text:?} is not SIZE:REFILL_MS[:ONE_TIME_BURST] or \"none\"");
    let parts: Vec<u64> = text
        .split(':')
        .map(|p| p.parse::<u64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    match parts[..] {
        [size, refill] => Ok(json!({"size": size, "refill_time": refill})),
        [size, refill, burst] => {
            Ok(json!({"size": size, "refill_time": refill, "one_time_burst": burst}))
        }
        _ => Err(bad()),
    }
}

/// Most bytes of a VM definition file (as a config file).
const MAX_DEFINITION: u64 = 16 << 20;

/// A `create` request: the definition read from `file`, its directory as
/// the base of relative paths.
fn create_request(file: &std::path::Path, start: bool) -> Result<Value, String> {
    use std::io::Read;
    let shown = file.display();
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_DEFINITION).read_to_string(&mut text))
        .map_err(|e| format!("{shown}: {e}"))?;
    let vm: Value = serde_json::from_str(&text).map_err(|e| format!("{shown}: not JSON: {e}"))?;
    let absolute = std::path::absolute(file).map_err(|e| format!("{shown}: {e}"))?;
    let base_dir = absolute
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/".into());
    Ok(json!({"op": "create", "vm": vm, "base_dir": base_dir, "start": start}))
}

/// Writes `text` to stdout. A reader that has gone (`hearth ctl ... |
/// head`) is not an error, and never a panic as `print!` would make it.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("hearth: error: writing to stdout: {e}");
        }
    }
}

pub fn main(args: CtlArgs) -> ExitCode {
    let request = match request(args.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hearth: error: {e}");
            return ExitCode::from(2);
        }
    };
    match hearth::api::client::call(&args.socket, &request) {
        Ok(reply) if request["op"] == "metrics" && reply["ok"] == true => {
            emit(reply["result"].as_str().unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(reply) => {
            let text = serde_json::to_string_pretty(&reply).unwrap_or_else(|_| reply.to_string());
            emit(&format!("{text}\n"));
            if reply["ok"] == true {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("hearth: error: {}: {e}", args.socket.display());
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_on_the_command_line() {
        assert_eq!(bucket("none"), Ok(Value::Null));
        assert_eq!(
            bucket("1048576:100"),
            Ok(json!({"size": 1048576, "refill_time": 100}))
        );
        assert_eq!(
            bucket("10:1000:50"),
            Ok(json!({"size": 10, "refill_time": 1000, "one_time_burst": 50}))
        );
        for bad in ["", "10", "a:b", "1:2:3:4", "-1:100"] {
            assert!(bucket(bad).is_err(), "{bad:?}");
        }
    }
}
