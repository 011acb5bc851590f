//! Step one of three, the mechanics: JSON text to a [`Value`] (reporting
//! duplicate keys), then each section deserialized on its own into its typed
//! struct (see `raw.rs`), every error named by its JSON path.
//!
//! serde stops at the first error of a section. [`parse_section`] reports it,
//! with the path `serde_path_to_error` found, removes the key it is about and
//! deserializes the section again, until the section parses: one run reports
//! every unknown key and every ill-typed field. A section that had an error
//! is not returned, so validation never sees half a section; a *container*
//! (the top level, a VM, `host`), whose fields are sections kept as
//! [`Value`]s, is returned without its bad keys so that its sections are
//! checked too.

use serde::de::{self, DeserializeOwned, Visitor};
use serde::Deserializer;
use serde_json::{Map, Value};
use serde_path_to_error::Segment;

use super::error::{humanize_serde, Errors, ROOT};

/// Most errors reported for one section (each costs one more pass over it).
const MAX_SECTION_ERRORS: usize = 32;

/// Outcome of parsing one section.
#[derive(Debug)]
pub(crate) enum Parsed<T> {
    /// Not given (or `null`): validation applies the defaults.
    Absent,
    Ok(T),
    /// Given but structurally wrong; the errors are already reported.
    Failed,
}

impl<T> Parsed<T> {
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Parsed<U> {
        self.and_then(|section| Parsed::Ok(f(section)))
    }

    pub(crate) fn and_then<U>(self, f: impl FnOnce(T) -> Parsed<U>) -> Parsed<U> {
        match self {
            Parsed::Absent => Parsed::Absent,
            Parsed::Ok(section) => f(section),
            Parsed::Failed => Parsed::Failed,
        }
    }
}

impl<T: Default> Parsed<T> {
    /// The section, its defaults when absent, `None` when it failed.
    pub(crate) fn or_default(self) -> Option<T> {
        match self {
            Parsed::Absent => Some(T::default()),
            Parsed::Ok(section) => Some(section),
            Parsed::Failed => None,
        }
    }
}

/// Parses JSON text into a [`Value`] like `serde_json::from_str`, and also
/// reports every key that appears twice in one object (serde_json would keep
/// the last silently). Syntax errors are returned as serde_json's error, which
/// carries the line and column.
pub(crate) fn parse_json(text: &str, errors: &mut Errors) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = ValueSeed {
        path: String::new(),
        errors,
    };
    let value = de::DeserializeSeed::deserialize(seed, &mut de)?;
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
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, items.len());
            let seed = ValueSeed {
                path,
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

/// Joins a JSON path prefix and a key: `("vms[1]", "cpu")` -> `vms[1].cpu`.
pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A path as shown in messages: the top level is `<root>`.
pub(crate) fn shown(path: &str) -> &str {
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

/// Parses an optional section found at `path`; `null` is absent.
pub(crate) fn parse_optional<T: DeserializeOwned>(
    value: Option<Value>,
    path: &str,
    errors: &mut Errors,
) -> Parsed<T> {
    match value {
        None | Some(Value::Null) => Parsed::Absent,
        Some(value) => parse_section(value, path, errors).map_or(Parsed::Failed, Parsed::Ok),
    }
}

/// Parses an optional array of sections found at `path` (`drives`, say):
/// every entry is parsed and reported; `Failed` if any entry failed.
pub(crate) fn parse_list<T: DeserializeOwned>(
    value: Option<Value>,
    path: &str,
    errors: &mut Errors,
) -> Parsed<Vec<T>> {
    parse_entries(value, path, errors).and_then(|entries| {
        entries
            .into_iter()
            .collect::<Option<Vec<T>>>()
            .map_or(Parsed::Failed, Parsed::Ok)
    })
}

/// Like [`parse_list`], with each entry's outcome (`None`: reported).
pub(crate) fn parse_entries<T: DeserializeOwned>(
    value: Option<Value>,
    path: &str,
    errors: &mut Errors,
) -> Parsed<Vec<Option<T>>> {
    match value {
        None | Some(Value::Null) => Parsed::Absent,
        Some(Value::Array(entries)) => Parsed::Ok(
            (entries.into_iter().enumerate())
                .map(|(i, entry)| parse_section(entry, &format!("{path}[{i}]"), errors))
                .collect(),
        ),
        Some(other) => {
            errors.push(
                path,
                format!("expected an array, found {}", describe(&other)),
            );
            Parsed::Failed
        }
    }
}

/// Deserializes the object `value` found at `path` into the section struct
/// `T`, reporting a non-object, every unknown key and every ill-typed field.
/// `None` if anything was reported.
pub(crate) fn parse_section<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Errors,
) -> Option<T> {
    parse_object(value, path, errors, false)
}

/// Like [`parse_section`], for containers whose fields are sections kept as
/// `Value`s: after reporting its bad keys it still returns the others.
pub(crate) fn parse_container<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Errors,
) -> Option<T> {
    parse_object(value, path, errors, true)
}

fn parse_object<T: DeserializeOwned>(
    mut value: Value,
    path: &str,
    errors: &mut Errors,
    container: bool,
) -> Option<T> {
    if !value.is_object() {
        let found = describe(&value);
        errors.push(shown(path), format!("expected an object, found {found}"));
        return None;
    }
    let mut failed = false;
    for _ in 0..MAX_SECTION_ERRORS {
        let error = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(section) => return (container || !failed).then_some(section),
            Err(error) => error,
        };
        failed = true;
        let segments: Vec<&Segment> = error.path().iter().collect();
        let message = error.inner().to_string();
        // The error is about the deepest object key on its path.
        let Some(last) = segments
            .iter()
            .rposition(|s| matches!(s, Segment::Map { .. }))
        else {
            errors.push(shown(path), humanize_serde(&message));
            return None;
        };
        let key = match segments[last] {
            Segment::Map { key } => key.as_str(),
            _ => "",
        };
        let unknown = message.strip_prefix(&format!("unknown field `{key}`, "));
        match unknown {
            Some(expected) => {
                // serde lists the fields in backticks; a field has none.
                let fields: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
                let at = path_of(path, &segments[..last]);
                errors.push(shown(&at), unknown_field_message(key, &fields));
            }
            None => errors.push(path_of(path, &segments[..=last]), humanize_serde(&message)),
        }
        if !remove(&mut value, &segments[..=last]) {
            return None;
        }
    }
    errors.push(
        shown(path),
        format!("more than {MAX_SECTION_ERRORS} errors here; the rest are not shown"),
    );
    None
}

/// `prefix` followed by the path `segments`: `drives[0].rate_limiter`.
fn path_of(prefix: &str, segments: &[&Segment]) -> String {
    let mut out = prefix.to_string();
    for segment in segments {
        match segment {
            Segment::Map { key } => out = join(&out, key),
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Enum { variant } => out = join(&out, variant),
            Segment::Unknown => out = join(&out, "?"),
        }
    }
    out
}

/// Removes the key that `segments` ends with from `value`; false if there is
/// no such key (then parsing again would find the same error).
fn remove(value: &mut Value, segments: &[&Segment]) -> bool {
    let Some((Segment::Map { key }, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = value;
    for segment in parents {
        let next = match (segment, at) {
            (Segment::Map { key }, Value::Object(map)) => map.get_mut(key),
            (Segment::Seq { index }, Value::Array(items)) => items.get_mut(*index),
            _ => None,
        };
        let Some(next) = next else { return false };
        at = next;
    }
    at.as_object_mut().and_then(|map| map.remove(key)).is_some()
}

/// Deserializes a plain value (such as `name`), reporting a type error at `path`.
pub(crate) fn parse_value<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Errors,
) -> Option<T> {
    serde_json::from_value(value)
        .map_err(|e| errors.push(shown(path), humanize_serde(&e.to_string())))
        .ok()
}

/// "unknown field", the fields that exist, and the closest one if it is close.
pub(crate) fn unknown_field_message(key: &str, fields: &[&str]) -> String {
    let mut message = format!(
        "unknown field {key:?} (expected one of: {})",
        fields.join(", ")
    );
    let closest = fields
        .iter()
        .map(|f| (strsim::normalized_levenshtein(key, f), f))
        .filter(|(similarity, _)| *similarity >= 0.6)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, near)) = closest {
        message.push_str(&format!("; did you mean {near:?}?"));
    }
    message
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        size: Option<u64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        path: Option<String>,
        count: Option<u64>,
        list: Option<Vec<u64>>,
        inner: Option<Inner>,
    }

    fn lines(errors: Errors) -> Vec<String> {
        match errors.finish::<()>(None) {
            Err(e) => e.iter().map(ToString::to_string).collect(),
            Ok(()) => Vec::new(),
        }
    }

    #[test]
    fn a_section_reports_every_unknown_key_and_bad_field() {
        let mut errors = Errors::default();
        let value =
            json!({"pth": "x", "count": "many", "list": [1, -1], "inner": {"size": 1, "sise": 2}});
        let parsed: Option<Section> = parse_section(value, "vms[2].s", &mut errors);
        assert!(parsed.is_none());
        assert_eq!(
            lines(errors),
            [
                "vms[2].s.count: invalid type: string \"many\", expected a non-negative integer",
                "vms[2].s.inner: unknown field \"sise\" (expected one of: size); did you mean \"size\"?",
                "vms[2].s.list: invalid value: integer -1, expected a non-negative integer",
                "vms[2].s: unknown field \"pth\" (expected one of: path, count, list, inner); did you mean \"path\"?",
            ]
        );
    }

    #[test]
    fn a_container_keeps_its_good_keys() {
        let mut errors = Errors::default();
        let value = json!({"count": 3, "extra": true, "path": 5});
        let parsed: Option<Section> = parse_container(value, "", &mut errors);
        assert_eq!(parsed.map(|s| s.count), Some(Some(3)));
        assert_eq!(
            lines(errors),
            [
                "<root>: unknown field \"extra\" (expected one of: path, count, list, inner)",
                "path: invalid type: number 5, expected a string",
            ]
        );
    }

    #[test]
    fn errors_per_section_are_bounded() {
        let mut errors = Errors::default();
        let map: Map<String, Value> = (0..1000).map(|i| (format!("k{i}"), json!(i))).collect();
        let parsed: Option<Section> = parse_section(Value::Object(map), "s", &mut errors);
        assert!(parsed.is_none());
        let lines = lines(errors);
        assert_eq!(lines.len(), MAX_SECTION_ERRORS + 1);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("s: more than 32 errors here; the rest are not shown")
        );
    }

    #[test]
    fn lists_and_non_objects() {
        let mut errors = Errors::default();
        let parsed: Parsed<Vec<Inner>> = parse_list(
            Some(json!([{"size": 1}, 7, {"size": "x"}])),
            "drives",
            &mut errors,
        );
        assert!(matches!(parsed, Parsed::Failed));
        let parsed: Parsed<Vec<Inner>> = parse_list(Some(json!({})), "net", &mut errors);
        assert!(matches!(parsed, Parsed::Failed));
        assert_eq!(
            lines(errors),
            [
                "drives[1]: expected an object, found number 7",
                "drives[2].size: invalid type: string \"x\", expected a non-negative integer",
                "net: expected an array, found an object",
            ]
        );
    }

    #[test]
    fn duplicate_keys_are_reported_with_their_path() {
        let mut errors = Errors::default();
        let text =
            r#"{"vms": [{"cpu": {"vcpus": 1, "vcpus": 2}}], "vms": [], "x": [1, {"a": {}}]}"#;
        let value = parse_json(text, &mut errors).expect("valid JSON");
        assert_eq!(value["x"], json!([1, {"a": {}}]));
        assert_eq!(
            lines(errors),
            [
                "vms[0].cpu: duplicate field \"vcpus\" (each key may appear only once)",
                "<root>: duplicate field \"vms\" (each key may appear only once)",
            ]
        );
    }

    #[test]
    fn suggestions_only_when_close() {
        let fields = ["vcpus", "weight", "io"];
        assert!(unknown_field_message("vcpu", &fields).ends_with("did you mean \"vcpus\"?"));
        assert!(!unknown_field_message("x", &fields).contains("did you mean"));
        assert!(!unknown_field_message("budget", &fields).contains("did you mean"));
    }
}
