//! The VM being configured before `InstanceStart`: Firecracker's config
//! file, built up one `PUT` at a time. Each piece is checked as it arrives
//! by validating the whole file as it would then be (with
//! `config::parse_str`, the code that checks `--config-file`) and keeping
//! the errors about that piece; the others (a boot source not given yet)
//! wait for `InstanceStart`, which validates the whole and turns it into a
//! Hearth VM definition.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::routes::List;

/// Firecracker's machine configuration when none is given.
fn default_machine_config() -> Value {
    json!({
        "vcpu_count": crate::config::FIRECRACKER_DEFAULT_VCPUS,
        "mem_size_mib": crate::config::FIRECRACKER_DEFAULT_MEM_MIB,
        "smt": false,
        "track_dirty_pages": false,
        "huge_pages": "None",
    })
}

/// A Firecracker config file in the making.
#[derive(Debug, Clone)]
pub struct Preboot {
    config: Map<String, Value>,
    /// Where relative paths in it resolve (Firecracker: its working
    /// directory).
    base_dir: PathBuf,
}

/// Whether an error at `path` is about `section` (`boot-source`,
/// `drives[2]`, ...).
fn about(path: &str, section: &str) -> bool {
    path == section
        || path
            .strip_prefix(section)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

impl Preboot {
    pub fn new(base_dir: &Path) -> Preboot {
        Preboot {
            config: Map::new(),
            base_dir: base_dir.to_path_buf(),
        }
    }

    /// A configuration given whole (a `--config-file`), already validated.
    pub fn from_map(config: Map<String, Value>, base_dir: &Path) -> Preboot {
        Preboot {
            config,
            base_dir: base_dir.to_path_buf(),
        }
    }

    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Records a change made after boot (`PATCH /balloon`) in the section
    /// `GET` shows.
    pub fn set_field(&mut self, section: &str, field: &str, value: Value) {
        if let Some(Value::Object(map)) = self.config.get_mut(section) {
            map.insert(field.to_string(), value);
        }
    }

    /// The file as it is, with Firecracker's default machine configuration
    /// when none was given (which also marks it as Firecracker's form).
    fn full(config: &Map<String, Value>) -> Value {
        let mut full = config.clone();
        full.entry("machine-config")
            .or_insert_with(default_machine_config);
        Value::Object(full)
    }

    /// Validates `candidate`; `Err` with the problems about `section`.
    fn check(&self, candidate: &Map<String, Value>, section: &str) -> Result<(), String> {
        let text = Self::full(candidate).to_string();
        let Err(errors) = crate::config::parse_str(&text, &self.base_dir) else {
            return Ok(());
        };
        let mine: Vec<String> = errors
            .iter()
            .filter(|e| about(&e.path, section))
            .map(ToString::to_string)
            .collect();
        if mine.is_empty() {
            Ok(())
        } else {
            Err(mine.join("; "))
        }
    }

    /// Replaces a section (`boot-source`, `machine-config`, `vsock`,
    /// `balloon`, `logger`), if it is valid.
    pub fn put_section(&mut self, key: &str, body: Value) -> Result<(), String> {
        let mut candidate = self.config.clone();
        candidate.insert(key.to_string(), body);
        self.check(&candidate, key)?;
        self.config = candidate;
        Ok(())
    }

    /// Changes some fields of the machine configuration.
    pub fn patch_machine_config(&mut self, body: Value) -> Result<(), String> {
        let mut merged = self.machine_config();
        if let (Some(m), Value::Object(changes)) = (merged.as_object_mut(), body) {
            m.extend(changes);
        }
        self.put_section("machine-config", merged)
    }

    /// Adds an entry to `drives` or `network-interfaces`, or replaces the
    /// one with the same id, if it is valid. A new entry needs a virtio
    /// slot: past them, the request is refused (rather than the
    /// configuration growing with every id a client makes up).
    pub fn put_entry(&mut self, list: List, id: &str, body: Value) -> Result<(), String> {
        let is_entry = |e: &Value| e.get(list.id_field()).and_then(Value::as_str) == Some(id);
        let entries = |key: &str| match self.config.get(key) {
            Some(Value::Array(v)) => v.len(),
            _ => 0,
        };
        let exists = match self.config.get(list.key()) {
            Some(Value::Array(v)) => v.iter().any(is_entry),
            _ => false,
        };
        let slots = crate::layout::MMIO_IRQS.len();
        if !exists && entries("drives") + entries("network-interfaces") >= slots {
            return Err(format!(
                "{}: a VM has {slots} virtio slots, all taken by drives and network interfaces",
                list.key()
            ));
        }
        let mut candidate = self.config.clone();
        let entries = candidate
            .entry(list.key())
            .or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(entries) = entries else {
            return Err(format!("{}: not a list", list.key()));
        };
        let same = |e: &Value| e.get(list.id_field()).and_then(Value::as_str) == Some(id);
        let index = match entries.iter().position(same) {
            Some(i) => {
                entries[i] = body;
                i
            }
            None => {
                entries.push(body);
                entries.len() - 1
            }
        };
        self.check(&candidate, &format!("{}[{index}]", list.key()))?;
        self.config = candidate;
        Ok(())
    }

    /// Whether a section or list was given.
    pub fn has(&self, key: &str) -> bool {
        self.config.get(key).is_some_and(|v| !v.is_null())
    }

    pub fn section(&self, key: &str) -> Option<&Value> {
        self.config.get(key).filter(|v| !v.is_null())
    }

    /// `GET /machine-config`: the configuration with Firecracker's defaults.
    pub fn machine_config(&self) -> Value {
        let mut out = default_machine_config();
        if let (Some(out), Some(Value::Object(given))) =
            (out.as_object_mut(), self.config.get("machine-config"))
        {
            out.extend(given.clone());
        }
        out
    }

    /// `GET /vm/config`: the whole configuration, as Firecracker shows it.
    pub fn vm_config(&self, metrics: Option<Value>) -> Value {
        let get = |k: &str| self.config.get(k).cloned().unwrap_or(Value::Null);
        let list = |k: &str| self.config.get(k).cloned().unwrap_or_else(|| json!([]));
        json!({
            "balloon": get("balloon"),
            "drives": list("drives"),
            "boot-source": get("boot-source"),
            "cpu-config": null,
            "logger": get("logger"),
            "machine-config": self.machine_config(),
            "metrics": metrics.unwrap_or(Value::Null),
            "mmds-config": null,
            "network-interfaces": list("network-interfaces"),
            "vsock": get("vsock"),
            "entropy": null,
        })
    }

    /// The whole file checked, as Hearth's VM definition (every path
    /// absolute); `Err` lists every problem.
    pub fn definition(&self) -> Result<Value, String> {
        let text = Self::full(&self.config).to_string();
        let spec = crate::config::parse_str(&text, &self.base_dir).map_err(|e| {
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        crate::config::spec_to_json(&spec).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> &'static str {
        env!("HEARTH_TEST_GUEST_ELF")
    }

    #[test]
    fn sections_are_checked_as_they_arrive() {
        let mut p = Preboot::new(Path::new("/"));
        let e = p
            .put_section(
                "boot-source",
                json!({"kernel_image_path": "/no/such/kernel"}),
            )
            .unwrap_err();
        assert!(
            e.starts_with("boot-source.kernel_image_path: \"/no/such/kernel\""),
            "{e}"
        );
        assert!(!p.has("boot-source"), "a refused section is not kept");
        // A machine config before the boot source: the missing boot source
        // is not this request's problem.
        p.put_section(
            "machine-config",
            json!({"vcpu_count": 2, "mem_size_mib": 64}),
        )
        .unwrap();
        let e = p
            .put_section(
                "machine-config",
                json!({"vcpu_count": 99, "mem_size_mib": 64}),
            )
            .unwrap_err();
        assert!(
            e.contains("machine-config.vcpu_count: 99 is out of range"),
            "{e}"
        );
        let e = p
            .put_section(
                "machine-config",
                json!({"vcpu_count": 1, "mem_size_mib": 64, "x": 1}),
            )
            .unwrap_err();
        assert!(e.contains("machine-config: unknown field \"x\""), "{e}");
        assert_eq!(p.machine_config()["vcpu_count"], 2);
        p.patch_machine_config(json!({"mem_size_mib": 48})).unwrap();
        assert_eq!(p.machine_config()["mem_size_mib"], 48);
        assert_eq!(p.machine_config()["vcpu_count"], 2);
        p.put_section(
            "boot-source",
            json!({"kernel_image_path": guest(), "boot_args": "x=1"}),
        )
        .unwrap();
        let def = p.definition().unwrap();
        assert_eq!(def["cpu"]["vcpus"], 2);
        assert_eq!(def["memory"]["size_mib"], 48);
        assert_eq!(def["kernel"]["cmdline"], "x=1 pci=off");
    }

    #[test]
    fn entries_replace_by_id_and_errors_name_the_entry() {
        let mut p = Preboot::new(Path::new("/"));
        let bad = json!({"drive_id": "root", "path_on_host": "/no/such.ext4",
                         "is_root_device": true, "is_read_only": true});
        let e = p.put_entry(List::Drives, "root", bad).unwrap_err();
        assert!(e.contains("drives[0].path_on_host"), "{e}");
        let e = p
            .put_entry(
                List::Drives,
                "root",
                json!({"drive_id": "root", "path_on_host": guest()}),
            )
            .unwrap_err();
        assert!(e.contains("drives[0].is_root_device: required"), "{e}");
        assert!(!p.has("drives"));
        assert!(p
            .definition()
            .unwrap_err()
            .contains("boot-source: required"));
        let cfg = p.vm_config(None);
        assert_eq!(cfg["drives"], json!([]));
        assert_eq!(cfg["machine-config"]["mem_size_mib"], 128);
    }

    /// Found by the `fcapi` fuzz target's bound on bodies: every new id
    /// was kept (and the whole file checked again at each), so a client
    /// grew the configuration without limit.
    #[test]
    fn new_entries_stop_at_the_virtio_slots() {
        let mut p = Preboot::new(Path::new("/"));
        let drive = |id: &str| {
            json!({"drive_id": id, "path_on_host": guest(),
                                      "is_root_device": false, "is_read_only": true})
        };
        let slots = crate::layout::MMIO_IRQS.len();
        for i in 0..slots {
            let id = format!("d{i}");
            p.put_entry(List::Drives, &id, drive(&id)).unwrap();
        }
        let e = p
            .put_entry(List::Drives, "more", drive("more"))
            .unwrap_err();
        assert!(e.contains(&format!("a VM has {slots} virtio slots")), "{e}");
        let tap = json!({"iface_id": "eth0", "host_dev_name": "tap0"});
        let e = p.put_entry(List::Interfaces, "eth0", tap).unwrap_err();
        assert!(e.starts_with("network-interfaces: a VM has"), "{e}");
        // Replacing one is still fine.
        p.put_entry(List::Drives, "d0", drive("d0")).unwrap();
        assert_eq!(
            p.vm_config(None)["drives"].as_array().map(Vec::len),
            Some(slots)
        );
    }

    #[test]
    fn an_error_about_another_section_is_not_this_ones() {
        assert!(about("drives[1].path_on_host", "drives[1]"));
        assert!(about("boot-source", "boot-source"));
        assert!(!about("drives[10].x", "drives[1]"));
        assert!(!about("boot-sourcex", "boot-source"));
    }
}
