//! A small logger to stderr: `hearth: LEVEL: message`, with the level set
//! by `--log-level` or `HEARTH_LOG`.

use std::io::Write;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info => "",
            Level::Debug => "debug: ",
            Level::Trace => "trace: ",
        };
        let t = crate::since_start().as_secs_f64();
        // One write per line: stderr is unbuffered, and `writeln!` on it
        // makes a system call per piece of the format (dozens for a VM's
        // summary; with 200 VMs stopping, thousands on the event loop).
        let line = format!("[{t:9.3}] hearth: {level}{}\n", record.args());
        if let Ok(mut file) = FILE.lock() {
            if let Some(f) = file.as_mut() {
                // A FIFO nobody drains: the line is dropped (the file is non-blocking).
                let _ = f.write_all(line.as_bytes());
                return;
            }
        }
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Where log lines go instead of stderr, once set.
static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Sends every later log line to `file` instead of stderr (`hearth
/// firecracker`'s `PUT /logger` with a `log_path`).
pub fn log_to_file(file: std::fs::File) {
    if let Ok(mut f) = FILE.lock() {
        *f = Some(file);
    }
}

/// Installs the logger at `level`.
pub fn init(level: LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
