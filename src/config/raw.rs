//! Step one of three: plain serde data as written in the JSON file.
//!
//! Parsing is layered so that one run reports every structural problem: the
//! top level and each VM keep their sections as [`Value`]s, and each section
//! is then deserialized on its own by [`parse_section`], which reports every
//! unknown key and every ill-typed field of the section with its JSON path.
//!
//! Invariant for every section struct: all fields are `Option` (defaults are
//! applied in validation), so a section can be deserialized one key at a time.
//! New fields (`cpu.weight`, `memory.floor_mib`, `host.memory.budget_mib`, an
//! `acl` section, ...) are added as further `Option` fields; a nested object
//! is kept as a `Value` and parsed with its own `parse_section` call.

use std::path::PathBuf;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::error::{humanize_serde, Errors, ROOT};

/// Top level of a monitor file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMonitor {
    pub host: Option<Value>,
    pub vms: Option<Vec<Value>>,
}

/// `host`: host-wide policy, one section per resource. `memory` (the
/// host-wide memory budget) is added here beside `cpu` as another `Value`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHost {
    pub cpu: Option<Value>,
    /// The control socket, parsed by `config/api.rs`.
    pub api: Option<Value>,
    pub seccomp: Option<bool>,
    pub memory: Option<Value>,
}

/// `host.memory`: the memory budget and the allocator's tick.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHostMemory {
    pub budget_mib: Option<u64>,
    pub tick_ms: Option<u64>,
}

/// `host.cpu`: which host CPUs the vCPU threads may use, and the scheduler tick.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHostCpu {
    /// Wider than `usize` needs, so that a huge number is "not online", not a type error.
    pub cpus: Option<Vec<u64>>,
    pub tick_ms: Option<u64>,
    pub scheduler: Option<bool>,
}

/// One VM definition: the top level of a single-VM file or an entry of `vms`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVm {
    pub name: Option<Value>,
    pub kernel: Option<Value>,
    pub cpu: Option<Value>,
    pub memory: Option<Value>,
    pub serial: Option<Value>,
    pub acl: Option<Value>,
}

/// The keys of a monitor file, used to recognise its form.
pub(crate) const MONITOR_KEYS: &[&str] = &["host", "vms"];

/// The keys of a VM definition, used to recognise the single-VM form.
pub(crate) const VM_KEYS: &[&str] = &["name", "kernel", "cpu", "memory", "serial", "acl"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKernel {
    pub path: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub protocol: Option<RawProtocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawProtocol {
    Auto,
    Linux,
    Pvh,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCpu {
    /// Wider than the spec's `u8` so that 300 is "out of range", not a type error.
    pub vcpus: Option<u64>,
    /// Wider than the spec's `u32` for the same reason.
    pub weight: Option<u64>,
    /// In physical CPUs; an integer is accepted too.
    pub max: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMemory {
    pub size_mib: Option<u64>,
    pub floor_mib: Option<u64>,
    pub ceiling_mib: Option<u64>,
    pub weight: Option<u64>,
    pub balloon: Option<bool>,
    pub balloon_mib: Option<u64>,
    pub deflate_on_oom: Option<bool>,
    pub stats_interval_s: Option<u64>,
    pub prefault: Option<bool>,
    pub free_page_reporting: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSerial {
    pub output: Option<RawSerialOutput>,
    pub path: Option<PathBuf>,
    pub stdin: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawSerialOutput {
    Stdout,
    File,
    Off,
}

/// Parses JSON text into a [`Value`] like `serde_json::from_str`, and also
/// reports every key that appears twice in one object (serde_json would keep
/// the last silently). Syntax errors are returned as serde_json's error, which
/// carries the line and column.
pub(crate) fn parse_json(text: &str, errors: &mut Errors) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = de::DeserializeSeed::deserialize(
        ValueSeed {
            path: String::new(),
            errors,
        },
        &mut de,
    )?;
    de.end()?;
    Ok(value)
}

/// Builds a [`Value`], tracking the JSON path to report duplicate keys.
struct ValueSeed<'a> {
    path: String,
    errors: &'a mut Errors,
}

impl<'de> de::DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let seed = ValueSeed {
                path: format!("{}[{}]", self.path, items.len()),
                errors: &mut *self.errors,
            };
            match seq.next_element_seed(seed)? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let seed = ValueSeed {
                path: join(&self.path, &key),
                errors: &mut *self.errors,
            };
            let value = map.next_value_seed(seed)?;
            if object.contains_key(&key) {
                self.errors.push(
                    shown(&self.path),
                    format!("duplicate field {key:?} (each key may appear only once)"),
                );
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Outcome of parsing one section.
#[derive(Debug)]
pub(crate) enum Parsed<T> {
    /// Not given (or `null`): validation applies the defaults.
    Absent,
    Ok(T),
    /// Given but structurally wrong; the errors are already reported.
    Failed,
}

/// One VM definition after the structural step: each section parsed on its own.
#[derive(Debug)]
pub(crate) struct ParsedVm {
    pub name: Parsed<String>,
    pub kernel: Parsed<RawKernel>,
    pub cpu: Parsed<RawCpu>,
    pub memory: Parsed<RawMemory>,
    pub serial: Parsed<RawSerial>,
    pub acl: Parsed<super::acl::RawAcl>,
}

impl ParsedVm {
    /// Parses the VM definition `value` found at `path` (`""` for a single-VM
    /// file, `vms[i]` in a monitor file). `None` if it is not an object.
    pub(crate) fn parse(value: Value, path: &str, errors: &mut Errors) -> Option<Self> {
        if !value.is_object() {
            errors.push(
                shown(path),
                format!(
                    "expected an object (a VM definition), found {}",
                    describe(&value)
                ),
            );
            return None;
        }
        let raw: RawVm = parse_container(value, path, errors)?;
        let name = match raw.name {
            None | Some(Value::Null) => Parsed::Absent,
            Some(v) => match parse_value(v, &join(path, "name"), errors) {
                Some(name) => Parsed::Ok(name),
                None => Parsed::Failed,
            },
        };
        Some(Self {
            name,
            kernel: parse_optional(raw.kernel, &join(path, "kernel"), errors),
            cpu: parse_optional(raw.cpu, &join(path, "cpu"), errors),
            memory: parse_optional(raw.memory, &join(path, "memory"), errors),
            serial: parse_optional(raw.serial, &join(path, "serial"), errors),
            acl: parse_optional(raw.acl, &join(path, "acl"), errors),
        })
    }

    /// `serial.stdin` if it was given explicitly.
    pub(crate) fn explicit_stdin(&self) -> Option<bool> {
        match &self.serial {
            Parsed::Ok(serial) => serial.stdin,
            _ => None,
        }
    }
}

/// Joins a JSON path prefix and a key: `("vms[1]", "cpu")` -> `vms[1].cpu`.
pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn shown(path: &str) -> &str {
    if path.is_empty() {
        ROOT
    } else {
        path
    }
}

/// Describes a JSON value's kind and, for scalars, the value itself.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// Parses an optional section value found at `path`.
pub(crate) fn parse_optional<T: DeserializeOwned>(
    value: Option<Value>,
    path: &str,
    errors: &mut Errors,
) -> Parsed<T> {
    match value {
        None | Some(Value::Null) => Parsed::Absent,
        Some(value) => match parse_section(value, path, errors) {
            Some(section) => Parsed::Ok(section),
            None => Parsed::Failed,
        },
    }
}

/// Deserializes the object `value` found at `path` into the section struct
/// `T`, reporting a non-object, every unknown key and every ill-typed field.
/// Returns `None` if anything was reported.
pub(crate) fn parse_section<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Errors,
) -> Option<T> {
    parse_object(value, path, errors, false)
}

/// Like [`parse_section`], for containers whose fields are sections kept as
/// `Value`s (the top level, a VM): after reporting unknown keys it still
/// returns the known ones, so that their sections are checked too.
pub(crate) fn parse_container<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Errors,
) -> Option<T> {
    parse_object(value, path, errors, true)
}

fn parse_object<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Errors,
    keep_known: bool,
) -> Option<T> {
    let Value::Object(map) = value else {
        errors.push(
            shown(path),
            format!("expected an object, found {}", describe(&value)),
        );
        return None;
    };
    let Some(fields) = struct_fields::<T>() else {
        // Not a plain struct: let serde report what it can.
        return parse_value(Value::Object(map), path, errors);
    };
    let mut ok = true;
    let mut known = Map::new();
    for (key, field_value) in map {
        if !fields.contains(&key.as_str()) {
            errors.push(shown(path), unknown_field_message(&key, fields));
            ok = false;
            continue;
        }
        // Every field is optional, so a one-key object isolates this field's error.
        let mut single = Map::new();
        single.insert(key.clone(), field_value.clone());
        if let Err(e) = serde_json::from_value::<T>(Value::Object(single)) {
            errors.push(join(path, &key), humanize_serde(&e.to_string()));
            ok = false;
            continue;
        }
        known.insert(key, field_value);
    }
    if !ok && !keep_known {
        return None;
    }
    parse_value(Value::Object(known), path, errors)
}

/// Deserializes a plain value (such as `name`), reporting a type error at `path`.
pub(crate) fn parse_value<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Errors,
) -> Option<T> {
    match serde_json::from_value(value) {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(shown(path), humanize_serde(&e.to_string()));
            None
        }
    }
}

pub(crate) fn unknown_field_message(key: &str, fields: &[&str]) -> String {
    let mut message = if fields.is_empty() {
        format!("unknown field {key:?} (no fields are accepted here yet)")
    } else {
        format!(
            "unknown field {key:?} (expected one of: {})",
            fields.join(", ")
        )
    };
    if let Some(near) = fields.iter().find(|f| edit_distance(key, f) <= 2) {
        message.push_str(&format!("; did you mean {near:?}?"));
    }
    message
}

/// Levenshtein distance, for "did you mean" hints on short field names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The field names serde's derive gives a struct, so that the list of
/// accepted keys is never written twice. Serde's derived `Deserialize` for a
/// struct calls `deserialize_struct(name, FIELDS, visitor)`; this deserializer
/// records `FIELDS` and stops. `None` if `T` is not a struct.
pub(crate) fn struct_fields<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    let mut fields = None;
    // The probe always fails after recording; the error carries no information.
    let _ = T::deserialize(FieldsProbe(&mut fields));
    fields
}

struct FieldsProbe<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldsProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn struct_fields_reads_serde_field_lists() {
        assert_eq!(struct_fields::<RawVm>(), Some(VM_KEYS));
        assert_eq!(
            struct_fields::<RawCpu>(),
            Some(&["vcpus", "weight", "max"][..])
        );
        assert_eq!(
            struct_fields::<RawHost>(),
            Some(&["cpu", "api", "seccomp", "memory"][..])
        );
        assert_eq!(struct_fields::<RawMonitor>(), Some(&["host", "vms"][..]));
        assert_eq!(struct_fields::<String>(), None);
    }

    #[test]
    fn section_reports_every_unknown_key_and_bad_field() {
        let mut errors = Errors::default();
        let value = json!({"pth": "x", "cmdline": 5, "protocol": "pv", "initrd": "i"});
        let parsed: Option<RawKernel> = parse_section(value, "vms[2].kernel", &mut errors);
        assert!(parsed.is_none());
        let errors = errors.finish::<()>(None).expect_err("must fail");
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines.iter().any(|l| l
            == "vms[2].kernel: unknown field \"pth\" (expected one of: path, initrd, cmdline, protocol); did you mean \"path\"?"));
        assert!(lines
            .iter()
            .any(|l| l == "vms[2].kernel.cmdline: invalid type: number 5, expected a string"));
        assert!(lines.iter().any(|l| l
            == "vms[2].kernel.protocol: unknown variant \"pv\", expected one of \"auto\", \"linux\", \"pvh\""));
    }

    #[test]
    fn non_object_section_is_reported() {
        let mut errors = Errors::default();
        let parsed: Option<RawCpu> = parse_section(json!([1]), "cpu", &mut errors);
        assert!(parsed.is_none());
        let errors = errors.finish::<()>(None).expect_err("must fail");
        assert_eq!(
            errors.to_string(),
            "cpu: expected an object, found an array"
        );
    }

    #[test]
    fn duplicate_keys_are_reported_with_their_path() {
        let mut errors = Errors::default();
        let text =
            r#"{"vms": [{"cpu": {"vcpus": 1, "vcpus": 2}}], "vms": [], "x": [1, {"a": {}}]}"#;
        let value = parse_json(text, &mut errors).expect("valid JSON");
        assert_eq!(value["x"], json!([1, {"a": {}}]));
        let lines: Vec<String> = errors
            .finish::<()>(None)
            .expect_err("duplicates")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "vms[0].cpu: duplicate field \"vcpus\" (each key may appear only once)",
                "<root>: duplicate field \"vms\" (each key may appear only once)",
            ]
        );
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("vcpu", "vcpus"), 1);
        assert_eq!(edit_distance("kernal", "kernel"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
