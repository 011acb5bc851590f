//! Configuration errors: each names the JSON path (or CLI flag) it is about
//! and the offending value, and validation reports all of them at once.

use std::fmt;

use thiserror::Error;

/// One problem in a configuration.
///
/// `path` is where the problem is: a JSON path such as `vms[1].cpu.vcpus`, a
/// CLI flag such as `--vcpus`, `line 3, column 7` for a JSON syntax error,
/// `<root>` for the top-level object or `<file>` when the file itself cannot
/// be read. `message` names the bad value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in a configuration (never empty); displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// Wraps a single error.
    pub fn one(error: ConfigError) -> Self {
        Self(vec![error])
    }

    /// The errors, or `None` if there are none.
    pub(crate) fn from_vec(errors: Vec<ConfigError>) -> Option<Self> {
        (!errors.is_empty()).then_some(Self(errors))
    }

    /// The errors in the order they were found.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a `ConfigErrors` holds at least one error.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Collects errors while parsing and validating.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<ConfigError>);

impl Errors {
    /// How many errors were collected so far.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::new(path, message));
    }

    /// `Ok(value)` when nothing was collected, else all collected errors.
    /// A missing value with no errors cannot happen by construction; it is
    /// still reported rather than panicking.
    pub(crate) fn finish<T>(self, value: Option<T>) -> Result<T, ConfigErrors> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ if !self.0.is_empty() => Err(ConfigErrors(self.0)),
            _ => Err(ConfigErrors::one(ConfigError::new(
                "<root>",
                "internal error: validation failed without reporting why",
            ))),
        }
    }
}

/// The path of the top-level object in error messages.
pub(crate) const ROOT: &str = "<root>";

/// Makes a serde error message read like the rest: backtick-quoted names
/// become double-quoted, backtick-quoted numbers become bare, and Rust type
/// names become JSON words.
pub(crate) fn humanize_serde(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('`') {
            Some(end) => {
                let inner = &after[..end];
                if inner.parse::<f64>().is_ok() {
                    out.push_str(inner);
                } else {
                    out.push('"');
                    out.push_str(inner);
                    out.push('"');
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push('`');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    for (rust, json) in [
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected u8", "expected a non-negative integer"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected an array"),
        ("expected path string", "expected a string (a file path)"),
        ("invalid type: map", "invalid type: object"),
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: floating point", "invalid type: number"),
        ("invalid type: integer", "invalid type: number"),
    ] {
        if let Some(stripped) = out.strip_suffix(rust) {
            out = format!("{stripped}{json}");
        } else if out.starts_with(rust) {
            out = format!("{json}{}", &out[rust.len()..]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_error_per_line() {
        let errors = ConfigErrors(vec![
            ConfigError::new("cpu.vcpus", "0 is out of range (1..=254)"),
            ConfigError::new("name", "\"x y\" must match [A-Za-z0-9_-]{1,32}"),
        ]);
        assert_eq!(
            errors.to_string(),
            "cpu.vcpus: 0 is out of range (1..=254)\nname: \"x y\" must match [A-Za-z0-9_-]{1,32}"
        );
    }

    #[test]
    fn humanize_quotes_names_and_unquotes_numbers() {
        assert_eq!(
            humanize_serde("unknown variant `pv`, expected one of `auto`, `linux`, `pvh`"),
            "unknown variant \"pv\", expected one of \"auto\", \"linux\", \"pvh\""
        );
        assert_eq!(
            humanize_serde("invalid value: integer `-1`, expected u64"),
            "invalid value: integer -1, expected a non-negative integer"
        );
        assert_eq!(
            humanize_serde("invalid type: string \"two\", expected u64"),
            "invalid type: string \"two\", expected a non-negative integer"
        );
    }
}
