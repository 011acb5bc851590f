//! Target `config`: the config parser (`config::parse_str`) and the
//! control socket's VM definitions (`config::parse_vm_for_monitor`), on
//! arbitrary text and on the example configs of `resources/examples/`
//! mutated a few edits at a time (values replaced, keys removed or added,
//! VMs duplicated, the text cut or spliced). The examples' kernels,
//! initrds and disks are pointed at files in a scratch directory, so
//! that most mutants get past the file checks to the rules behind them.
//!
//! What must hold:
//! - nothing panics;
//! - a refusal lists errors each with a path (`<root>`, `line L, column
//!   C`, or keys and indices) and a non-empty message, on one line each;
//! - an accepted file is a sane spec (at least one VM, names unique), and
//!   `spec_to_json` of it loads back to the same spec (the promise of
//!   `hearth convert`);
//! - a VM definition for a running monitor never takes the name or the
//!   vsock CID of a VM the monitor runs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use hearth::config::{self, ConfigErrors, MonitorSpec, VmSpec};
use serde_json::{json, Value};

use crate::support::{self, List};

/// Keys a config may have (Hearth's and Firecracker's), and a stranger.
const KEYS: [&str; 48] = [
    "name",
    "kernel",
    "path",
    "cmdline",
    "initrd",
    "protocol",
    "cpu",
    "vcpus",
    "weight",
    "max",
    "memory",
    "size_mib",
    "floor_mib",
    "ceiling_mib",
    "balloon",
    "serial",
    "output",
    "stdin",
    "acl",
    "rules",
    "default",
    "own_devices",
    "on_violation",
    "ports",
    "mmio",
    "device",
    "access",
    "sizes",
    "action",
    "drives",
    "id",
    "root",
    "read_only",
    "engine",
    "rate_limiter",
    "net",
    "tap",
    "mac",
    "vsock",
    "guest_cid",
    "uds_path",
    "io",
    "host",
    "vms",
    "api",
    "boot-source",
    "machine-config",
    "bogus",
];

/// Values that mean something somewhere in a config.
const STRINGS: [&str; 24] = [
    "",
    "a",
    "web",
    "0x80",
    "0x90-0x80",
    "0x3f8-0x3ff",
    "serial0",
    "cmos",
    "io_uring",
    "sync",
    "tap0",
    "/dev/null",
    "..",
    "rootfs.ext4",
    "deny-and-log",
    "stop-vm-after 3",
    "read",
    "pvh",
    "file",
    "stdout",
    "02:00:00:00:01:01",
    "admin",
    "vmlinux",
    "ÿ\u{0}",
];

#[derive(Debug, Clone, Arbitrary)]
pub enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Small(u16),
    /// 2^n - 1 for n in 0..64, and 2^n.
    Edge(u8),
    Float(f64),
    Word(u8),
    Str(String),
    Empty(bool),
    One(Box<Val>),
}

impl Val {
    fn json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => json!(b),
            Val::Int(n) => json!(n),
            Val::Small(n) => json!(n),
            Val::Edge(n) => {
                let bit = 1u64 << (n % 64);
                json!(if n & 64 != 0 { bit } else { bit - 1 })
            }
            Val::Float(f) => json!(f),
            Val::Word(i) => json!(STRINGS[usize::from(*i) % STRINGS.len()]),
            Val::Str(s) => json!(s),
            Val::Empty(true) => json!([]),
            Val::Empty(false) => json!({}),
            Val::One(v) => json!([v.json()]),
        }
    }
}

/// One edit of a config: `path` picks a node, one selector per level.
#[derive(Debug, Clone, Arbitrary)]
pub enum Edit {
    Set {
        path: List<u8, 5>,
        value: Val,
    },
    Remove {
        path: List<u8, 5>,
    },
    Insert {
        path: List<u8, 5>,
        key: u8,
        value: Val,
    },
    /// Another copy of an element of the array at `path`.
    Duplicate {
        path: List<u8, 5>,
    },
    /// Text: keep only the first `n % len` bytes.
    Cut(u16),
    /// Text: insert bytes at `at % len`.
    Splice {
        at: u16,
        bytes: List<u8, 8>,
    },
}

/// Where a case's text comes from.
#[derive(Debug, Clone, Arbitrary)]
pub struct Case {
    /// Under 32: `text` as it is. From 192: an example with a name (a
    /// single VM) edited, as a VM definition for a running monitor: the
    /// `hello` example renamed (below 224) or the `devices` example, with
    /// its memory budget, disks, taps and vsock sockets (from 224).
    /// Otherwise an example, edited.
    pub kind: u8,
    pub which: u8,
    pub edits: List<Edit, 6>,
    pub text: String,
}

static TALLY: support::Tally<5> = support::Tally::new([
    "cases",
    "refused",
    "accepted",
    "round trips",
    "for monitor ok",
]);

/// The scratch directory, the examples with their files pointed into it,
/// and the running monitors for VM definitions.
struct Fixture {
    dir: PathBuf,
    examples: Vec<Value>,
    running: [MonitorSpec; 2],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // Cargo's scratch directory for integration tests: reused by the
        // next run, never left in /tmp.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-config");
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        std::fs::write(dir.join("vmlinux"), elf_kernel()).expect("a kernel");
        for disk in [
            "initramfs.cpio",
            "rootfs.ext4",
            "web-rootfs.ext4",
            "batch-rootfs.ext4",
            "scratch.img",
        ] {
            std::fs::write(dir.join(disk), [0u8; 4096]).expect("a scratch disk");
        }
        // Interfaces that exist, for the examples' taps (only their
        // names are checked).
        let mut taps: Vec<String> = std::fs::read_dir("/sys/class/net")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        taps.sort();
        let examples_dir = support::repo_dir().join("resources/examples");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&examples_dir)
            .expect("resources/examples")
            .map(|e| e.expect("a directory entry").path())
            .collect();
        names.sort();
        let examples: Vec<Value> = names
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).expect("an example");
                let mut v: Value = serde_json::from_str(&text).expect("an example is JSON");
                if !repoint(&mut v, &dir, &taps) {
                    // Fewer interfaces than the example has taps: no network.
                    drop_network(&mut v);
                }
                v
            })
            .collect();
        let mut hello = examples
            .iter()
            .find(|v| v["name"] == "hello")
            .expect("the hello example")
            .clone();
        hello["name"] = json!("running");
        let devices = examples
            .iter()
            .find(|v| v["vms"][0]["name"] == "web")
            .expect("the devices example");
        let running = [hello, devices.clone()].map(|v| {
            config::parse_str(&v.to_string(), &dir).expect("the examples are valid, files in place")
        });
        Fixture {
            dir,
            examples,
            running,
        }
    })
}

/// The smallest kernel the config accepts: an ELF64 x86_64 executable with
/// one loadable segment at 1 MiB (its code never runs).
fn elf_kernel() -> Vec<u8> {
    let mut elf = vec![0u8; 64 + 56 + 16];
    elf[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
    let mut put = |at: usize, bytes: &[u8]| elf[at..at + bytes.len()].copy_from_slice(bytes);
    put(16, &2u16.to_le_bytes()); // ET_EXEC
    put(18, &62u16.to_le_bytes()); // EM_X86_64
    put(20, &1u32.to_le_bytes());
    put(24, &0x10_0000u64.to_le_bytes()); // entry
    put(32, &64u64.to_le_bytes()); // program headers
    put(52, &64u16.to_le_bytes());
    put(54, &56u16.to_le_bytes());
    put(56, &1u16.to_le_bytes());
    put(64, &1u32.to_le_bytes()); // PT_LOAD
    put(68, &7u32.to_le_bytes());
    put(72, &120u64.to_le_bytes()); // offset
    put(80, &0x10_0000u64.to_le_bytes()); // vaddr
    put(88, &0x10_0000u64.to_le_bytes()); // paddr
    put(96, &16u64.to_le_bytes()); // file bytes
    put(104, &0x1000u64.to_le_bytes()); // memory bytes
    put(112, &0x1000u64.to_le_bytes()); // align
    elf
}

/// Points the kernel and initrd of an example at the scratch directory,
/// and its taps `tapN` at the host's `N`th interface; `false` if the host
/// has too few.
fn repoint(v: &mut Value, dir: &Path, taps: &[String]) -> bool {
    let mut found = true;
    match v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                let file = matches!(key.as_str(), "path" | "kernel_image_path" | "initrd");
                match value {
                    Value::String(s) if file && (s.ends_with("vmlinux") || s.ends_with(".elf")) => {
                        *s = dir.join("vmlinux").display().to_string()
                    }
                    Value::String(s) if file && s.ends_with(".cpio") => {
                        *s = dir.join("initramfs.cpio").display().to_string()
                    }
                    Value::String(s) if key == "tap" || key == "host_dev_name" => {
                        let n: usize = s.trim_start_matches("tap").parse().unwrap_or(0);
                        match taps.get(n) {
                            Some(tap) => *s = tap.clone(),
                            None => found = false,
                        }
                    }
                    other => found &= repoint(other, dir, taps),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                found &= repoint(item, dir, taps);
            }
        }
        _ => {}
    }
    found
}

/// Removes the network interfaces of an example (and of its VMs).
fn drop_network(v: &mut Value) {
    if let Value::Object(map) = v {
        map.remove("net");
        map.remove("network-interfaces");
        if let Some(Value::Array(vms)) = map.get_mut("vms") {
            vms.iter_mut().for_each(drop_network);
        }
    }
}

/// The node `path` leads to (each selector picks a key or an element;
/// the walk stops at a leaf or an empty container).
fn node<'a>(v: &'a mut Value, path: &[u8]) -> &'a mut Value {
    let Some((&sel, rest)) = path.split_first() else {
        return v;
    };
    let sel = usize::from(sel);
    let len = match v {
        Value::Object(map) => map.len(),
        Value::Array(items) => items.len(),
        _ => 0,
    };
    if len == 0 {
        return v;
    }
    let child = match v {
        Value::Object(map) => map.values_mut().nth(sel % len),
        Value::Array(items) => items.get_mut(sel % len),
        _ => None,
    };
    node(child.expect("a container with `len` children"), rest)
}

fn edit_value(v: &mut Value, edit: &Edit) {
    match edit {
        Edit::Set { path, value } => *node(v, path) = value.json(),
        Edit::Remove { path } => {
            let (last, parent) = path.split_last().map_or((0, &path[..0]), |(l, p)| (*l, p));
            match node(v, parent) {
                Value::Object(map) if !map.is_empty() => {
                    let key = map.keys().nth(usize::from(last) % map.len()).cloned();
                    key.map(|k| map.remove(&k));
                }
                Value::Array(items) if !items.is_empty() => {
                    let n = items.len();
                    items.remove(usize::from(last) % n);
                }
                _ => {}
            }
        }
        Edit::Insert { path, key, value } => {
            if let Value::Object(map) = node(v, path) {
                map.insert(KEYS[usize::from(*key) % KEYS.len()].into(), value.json());
            }
        }
        Edit::Duplicate { path } => {
            if let Value::Array(items) = node(v, path) {
                if let Some(first) = items.first().cloned() {
                    items.push(first);
                }
            }
        }
        Edit::Cut(_) | Edit::Splice { .. } => {}
    }
}

fn edit_text(text: &mut Vec<u8>, edit: &Edit) {
    match edit {
        Edit::Cut(n) => text.truncate(usize::from(*n) % (text.len() + 1)),
        Edit::Splice { at, bytes } => {
            let at = usize::from(*at) % (text.len() + 1);
            text.splice(at..at, bytes.iter().copied());
        }
        _ => {}
    }
}

/// The example `which`, edited: JSON edits first, then text ones.
fn edited(which: u8, edits: &[Edit], single_vm_only: bool) -> String {
    let f = fixture();
    let pool: Vec<&Value> = f
        .examples
        .iter()
        .filter(|v| !single_vm_only || v.get("name").is_some())
        .collect();
    let mut v = pool[usize::from(which) % pool.len()].clone();
    for e in edits {
        edit_value(&mut v, e);
    }
    let mut text = v.to_string().into_bytes();
    for e in edits {
        edit_text(&mut text, e);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// Whether `path` is where an error can be: `<root>`, `<file>`,
/// `<base_dir>`, `line L, column C` (JSON syntax), or keys and indices
/// (`vms[1].net.interfaces[0].tap`, `network-interfaces[0].host_dev_name`).
fn well_formed_path(path: &str) -> bool {
    if matches!(path, "<root>" | "<file>" | "<base_dir>") {
        return true;
    }
    if let Some(rest) = path.strip_prefix("line ") {
        let mut parts = rest.split(", column ");
        let number = |s: Option<&str>| {
            s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        };
        return number(parts.next()) && number(parts.next()) && parts.next().is_none();
    }
    path.split('.').all(|segment| {
        let key_end = segment.find('[').unwrap_or(segment.len());
        let (key, indices) = segment.split_at(key_end);
        let key_ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        let indices_ok = indices.is_empty()
            || indices
                .strip_prefix('[')
                .and_then(|i| i.strip_suffix(']'))
                .is_some_and(|i| {
                    i.split("][")
                        .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                });
        key_ok && indices_ok
    })
}

/// Each error names where it is and what is wrong, on one line.
fn check_errors(errors: &ConfigErrors) {
    assert!(!errors.is_empty(), "a refusal without an error");
    for e in errors {
        assert!(well_formed_path(&e.path), "an error at {:?}: {e:?}", e.path);
        assert!(
            !e.message.trim().is_empty(),
            "an error without a message: {e:?}"
        );
        assert!(!e.path.contains('\n') && !e.message.contains('\n'), "{e:?}");
    }
}

/// An accepted spec is sane and survives `hearth convert`.
fn check_spec(spec: &MonitorSpec, dir: &Path) {
    assert!(!spec.vms.is_empty(), "a spec without VMs");
    let mut names: Vec<&str> = spec.vms.iter().map(|v| v.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), spec.vms.len(), "VM names are unique");
    let json = config::spec_to_json(spec).expect("a valid spec converts");
    match config::parse_str(&json.to_string(), dir) {
        Ok(back) => assert_eq!(&back, spec, "{json:#}"),
        Err(e) => panic!("the converted spec is refused:\n{e}\n{json:#}"),
    }
    TALLY.add("round trips");
}

/// Runs one case; panics when a property fails.
pub fn run(case: &Case) {
    TALLY.add("cases");
    let f = fixture();
    if case.kind >= 192 {
        let text = edited(case.which, &case.edits, true);
        let monitor = &f.running[usize::from(case.kind >= 224)];
        let (host, running) = (&monitor.host, &monitor.vms);
        match config::parse_vm_for_monitor(&text, &f.dir, host, running) {
            Err(e) => check_errors(&e),
            Ok(vm) => {
                TALLY.add("for monitor ok");
                assert!(
                    running.iter().all(|r| r.name != vm.name),
                    "{} runs already",
                    vm.name
                );
                let cid = |v: &VmSpec| v.vsock.as_ref().map(|s| s.guest_cid);
                assert!(cid(&vm).is_none() || running.iter().all(|r| cid(r) != cid(&vm)));
            }
        }
        return;
    }
    let text = if case.kind < 32 {
        case.text.clone()
    } else {
        edited(case.which, &case.edits, false)
    };
    match config::parse_str(&text, &f.dir) {
        Err(e) => {
            TALLY.add("refused");
            check_errors(&e)
        }
        Ok(spec) => {
            TALLY.add("accepted");
            check_spec(&spec, &f.dir)
        }
    }
}

#[test]
fn config() {
    let _heap = support::shared();
    bolero::check!()
        .with_test_time(support::budget(8))
        .with_generator(support::input())
        .for_each(|bytes| support::decode(bytes, run));
    TALLY.report("config");
}

/// Fixed inputs: the examples themselves, and edits worth keeping.
mod regressions {
    use super::*;

    /// Every example loads (its files in place) and converts back to
    /// itself: the mutants start from valid configs.
    #[test]
    fn every_example_loads_and_converts_back() {
        let _heap = support::shared();
        let f = fixture();
        for which in 0..f.examples.len() {
            let text = edited(which as u8, &[], false);
            match config::parse_str(&text, &f.dir) {
                Ok(spec) => check_spec(&spec, &f.dir),
                Err(e) => panic!("example {which} is refused:\n{e}\n{text}"),
            }
        }
    }

    /// A cap that serde_json's default float parser read back one ULP
    /// off (4.0774220221397694e-308 came back as 4.077422022139769e-308):
    /// `hearth convert` must give back the very spec it was given.
    #[test]
    fn a_subnormal_cap_converts_back_exactly() {
        let _heap = support::shared();
        for max in ["4.0774220221397694e-308", "5e-324", "0.30000000000000004"] {
            run(&Case {
                kind: 0,
                which: 0,
                edits: vec![].into(),
                text: format!(
                    r#"{{"name": "hello", "kernel": {{"path": "vmlinux"}},
                        "memory": {{"size_mib": 256}}, "cpu": {{"vcpus": 2, "max": {max}}}}}"#
                ),
            });
        }
    }

    #[test]
    fn a_duplicated_vm_and_a_cut_file() {
        let _heap = support::shared();
        let dup = Edit::Duplicate {
            path: vec![1].into(),
        };
        for which in 0..8 {
            for edits in [vec![dup.clone()], vec![Edit::Cut(40)], vec![Edit::Cut(0)]] {
                let kind = if which % 2 == 0 { 64 } else { 200 };
                run(&Case {
                    kind,
                    which,
                    edits: edits.into(),
                    text: String::new(),
                });
            }
        }
    }
}
