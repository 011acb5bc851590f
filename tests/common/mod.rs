//! Shared helpers for the integration tests: run the real `hearth` binary
//! with a deadline, and find the guests it boots.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a finished `hearth` run left behind.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The guest's serial lines that start with `prefix`.
    pub fn lines_with<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.stdout.lines().filter(move |l| l.starts_with(prefix))
    }

    /// The value of `key=` in the first serial line starting with `prefix`.
    pub fn field(&self, prefix: &str, key: &str) -> Option<String> {
        let line = self.lines_with(prefix).next()?;
        let pat = format!("{key}=");
        let start = line.find(&pat)? + pat.len();
        let rest = &line[start..];
        Some(
            rest.split_whitespace()
                .next()?
                .trim_matches('"')
                .to_string(),
        )
    }

    pub fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked"),
            "hearth panicked:\n{}",
            self.stderr
        );
    }
}

/// The `hearth` binary under test.
pub fn hearth() -> &'static str {
    env!("CARGO_BIN_EXE_hearth")
}

/// Starts `hearth ARGS` with stdin closed and stdout and stderr piped.
pub fn spawn_hearth(args: &[&str]) -> std::process::Child {
    Command::new(hearth())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hearth")
}

/// Our assembly test guest, as an ELF (with a PVH note) and as a bzImage.
pub fn guest_elf() -> &'static str {
    env!("HEARTH_TEST_GUEST_ELF")
}

pub fn guest_bzimage() -> &'static str {
    env!("HEARTH_TEST_GUEST_BZIMAGE")
}

/// Runs `hearth ARGS` with stdin closed; a run that outlives `deadline`
/// is killed and fails the test, with what it printed so far.
pub fn run_hearth(args: &[&str], deadline: Duration) -> Run {
    let start = Instant::now();
    let mut child = spawn_hearth(args);
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for hearth") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out_reader.join().unwrap_or_default();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "hearth {args:?} did not finish within {deadline:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// A fresh scratch directory for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path.to_string_lossy().into_owned()
}

/// Usable RAM the test guest should find in the e820 map for `mib` MiB:
/// everything but the 385 KiB between the EBDA (0x9fc00) and 1 MiB.
pub fn expected_ram_kib(mib: u64) -> u64 {
    mib * 1024 - (0x10_0000 - 0x9_fc00) / 1024
}

/// The Linux guest kit (`resources/linux/build-kit.sh`, which the test
/// command runs first): HEARTH_KIT_DIR or /var/cache/hearth/kit. A missing
/// kit fails the test that needs it.
pub fn linux_kit() -> PathBuf {
    let dir = std::env::var_os("HEARTH_KIT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hearth/kit"));
    assert!(
        dir.join("vmlinux").is_file() && dir.join("initramfs.cpio").is_file(),
        "the Linux guest kit is missing in {}: run resources/linux/build-kit.sh",
        dir.display()
    );
    dir
}

/// The command line the kit's kernel needs on these machines.
pub fn linux_cmdline() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/resources/linux/cmdline.txt");
    std::fs::read_to_string(path)
        .expect("resources/linux/cmdline.txt")
        .trim()
        .to_string()
}

pub mod live;
pub mod netns;
