//! Hearth's own settings for a VM whose machine Firecracker's API
//! configures: the `vm` of the control socket's `create` with
//! `api_socket` (a template without `kernel`) merged into the definition
//! `InstanceStart` makes.

use serde_json::{json, Map, Value};

/// Hearth's own settings from `template` over the definition Firecracker's
/// configuration made: the name, the serial port (the monitor's stdout, not
/// its stdin, unless the template says otherwise), the access list, I/O
/// shares, and CPU and memory policy (never the vCPUs or the RAM size,
/// which are Firecracker's).
pub fn merge_template(definition: &mut Value, name: &str, template: &Map<String, Value>) {
    definition["name"] = json!(name);
    definition["serial"] = json!({"output": "stdout", "stdin": false});
    for (key, value) in template {
        match (key.as_str(), value) {
            ("cpu" | "memory", Value::Object(fields)) => {
                for (field, v) in fields {
                    if !matches!(field.as_str(), "vcpus" | "size_mib") {
                        definition[key.as_str()][field.as_str()] = v.clone();
                    }
                }
            }
            ("name" | "kernel" | "drives" | "net" | "vsock", _) => {}
            (other, v) => definition[other] = v.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_keeps_firecrackers_machine() {
        let mut def = json!({"name": "vm0", "cpu": {"vcpus": 2, "weight": 100},
                             "memory": {"size_mib": 64, "weight": 100},
                             "serial": {"output": "stdout", "stdin": true},
                             "kernel": {"path": "/k"}});
        let template = json!({"name": "x", "cpu": {"vcpus": 8, "weight": 300, "max": 0.5},
                              "memory": {"size_mib": 1, "floor_mib": 32},
                              "kernel": {"path": "/evil"}, "io": {"weight": 5}});
        let Value::Object(t) = template else {
            unreachable!()
        };
        merge_template(&mut def, "web", &t);
        assert_eq!(def["name"], "web");
        assert_eq!(def["cpu"], json!({"vcpus": 2, "weight": 300, "max": 0.5}));
        assert_eq!(
            def["memory"],
            json!({"size_mib": 64, "weight": 100, "floor_mib": 32})
        );
        assert_eq!(def["serial"], json!({"output": "stdout", "stdin": false}));
        assert_eq!(def["kernel"]["path"], "/k");
        assert_eq!(def["io"]["weight"], 5);
    }
}
