//! `PUT /logger`'s body, Firecracker's `LoggerConfig`: a log file (or
//! FIFO) and a level, which `hearth firecracker` applies to its process.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

/// `PUT /logger`'s body (Firecracker's `LoggerConfig`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoggerConfig {
    log_path: Option<PathBuf>,
    level: Option<String>,
    #[allow(dead_code)]
    show_level: Option<bool>,
    #[allow(dead_code)]
    show_log_origin: Option<bool>,
    module: Option<String>,
}

/// Firecracker's log levels (any case; `Warn` too).
fn log_level(name: &str) -> Result<log::LevelFilter, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "warning" | "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => {
            return Err(format!(
                "{name:?} is not a level (Off, Error, Warning, Info, Debug, Trace)"
            ))
        }
    })
}

/// The log file and level a `PUT /logger` body asks for; `Err` names the
/// field.
pub fn parse(body: &Value) -> Result<(Option<PathBuf>, Option<log::LevelFilter>), String> {
    let config: LoggerConfig =
        serde_json::from_value(body.clone()).map_err(|e| format!("logger: {e}"))?;
    if config.module.is_some() {
        return Err("logger.module: filtering by module is not supported by Hearth yet".into());
    }
    let level = config
        .level
        .as_deref()
        .map(log_level)
        .transpose()
        .map_err(|e| format!("logger.level: {e}"))?;
    Ok((config.log_path, level))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_guides_logger_parses_and_bad_fields_are_named() {
        let (path, level) = parse(&json!({"log_path": "./firecracker.log", "level": "Debug",
            "show_level": true, "show_log_origin": true}))
        .unwrap();
        assert_eq!(path, Some(PathBuf::from("./firecracker.log")));
        assert_eq!(level, Some(log::LevelFilter::Debug));
        assert_eq!(
            parse(&json!({"level": "warning"})).unwrap().1,
            Some(log::LevelFilter::Warn)
        );
        assert!(parse(&json!({"level": "Loud"}))
            .unwrap_err()
            .starts_with("logger.level: \"Loud\""));
        assert!(parse(&json!({"colour": true}))
            .unwrap_err()
            .contains("unknown field `colour`"));
        assert!(parse(&json!({"module": "x"}))
            .unwrap_err()
            .starts_with("logger.module"));
    }
}
