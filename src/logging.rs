//! Logging, set up once by `main` with fern: human-readable lines by default, JSON lines with
//! `--log-format json`. The level filter is `RUST_LOG`-style (`info`, `warn,wss::outcomes=debug`)
//! from `WSS_LOG_LEVEL`, or `RUST_LOG` when that is set. Every stage logs under its own target
//! (`wss::reader`, `wss::outcomes`, …). Secrets and tokens are never passed to a log macro.
//!
//! **Structured fields.** Pipeline log calls carry key-values (the `log` crate's `kv`):
//! `tenant`, `webhook`, `event_id`, `attempt`, `outcome` (`delivered`, `retrying`,
//! `dead_lettered`, `rejected`, `unrouted`, `redelivered`) and, where there is one, `reason` and
//! `status`. In JSON they are top-level keys beside `ts`, `level`, `target` and `msg` (numbers
//! stay numbers), so a log pipeline can select on them without parsing the message; in text they
//! follow the message as `key=value` (quoted when the value has spaces). A field may never shadow
//! `ts`, `level`, `target` or `msg`: it is then written as `kv_<key>`. Only ids, counts and
//! outcome words are ever passed as fields — never a secret, a token or a request body.

use std::{fmt, time::SystemTime};

use log::{
    kv::{self, VisitSource},
    LevelFilter, Record,
};

use crate::config::LogFormat;

/// Parses `info` or `warn,wss::outcomes=debug` into a default level and per-target levels.
pub fn parse_filter(spec: &str) -> Result<(LevelFilter, Vec<(String, LevelFilter)>), String> {
    let mut default = LevelFilter::Info;
    let mut targets = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((target, level)) => {
                let level =
                    level.trim().parse().map_err(|_| format!("{level:?} is not a log level (error, warn, info, debug, trace, off)"))?;
                targets.push((target.trim().to_owned(), level));
            }
            None => {
                default = part.parse().map_err(|_| format!("{part:?} is not a log level (error, warn, info, debug, trace, off)"))?;
            }
        }
    }
    Ok((default, targets))
}

pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let (default, targets) = parse_filter(filter)?;
    let mut dispatch = fern::Dispatch::new().level(default);
    for (target, level) in targets {
        dispatch = dispatch.level_for(target, level);
    }
    // Chatty dependencies stay at warn unless asked for by name.
    for noisy in ["h2", "hyper", "tower", "rustls", "ureq", "ureq_proto", "tonic"] {
        if !filter.contains(noisy) {
            dispatch = dispatch.level_for(noisy, LevelFilter::Warn.min(default));
        }
    }
    // And never below info, whatever is asked: their debug and trace lines carry what must never
    // reach a log (ureq: whole URLs with their query; ureq_proto: a dump of the request head,
    // static headers such as `authorization` included).
    dispatch = dispatch.filter(|metadata| shown(metadata.target(), metadata.level()));
    let dispatch = match format {
        LogFormat::Text => {
            dispatch.format(|out, message, record| out.finish(format_args!("{}", text_line(SystemTime::now(), message, record))))
        }
        LogFormat::Json => {
            dispatch.format(|out, message, record| out.finish(format_args!("{}", json_line(SystemTime::now(), message, record))))
        }
    };
    dispatch.chain(std::io::stderr()).apply().map_err(|e| e.to_string())
}

/// Most detail a dependency's log line may have: info. Only wss's own targets go further.
const DEPENDENCY_CAP: log::Level = log::Level::Info;

/// Whether a line of `target` at `level` may be written at all (before the level filter).
fn shown(target: &str, level: log::Level) -> bool {
    let own = target == "wss" || target.starts_with("wss::");
    own || level <= DEPENDENCY_CAP
}

/// Keys of the JSON line itself, which a field may not replace.
const OWN_KEYS: [&str; 4] = ["ts", "level", "target", "msg"];

/// A record's key-values, in order, as JSON values: integers and booleans as such, the rest as
/// their text.
fn fields(record: &Record<'_>) -> Vec<(String, serde_json::Value)> {
    struct Collect(Vec<(String, serde_json::Value)>);
    impl<'kvs> VisitSource<'kvs> for Collect {
        fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
            let value = if let Some(n) = value.to_u64() {
                serde_json::Value::from(n)
            } else if let Some(n) = value.to_i64() {
                serde_json::Value::from(n)
            } else if let Some(b) = value.to_bool() {
                serde_json::Value::from(b)
            } else {
                serde_json::Value::from(value.to_string())
            };
            self.0.push((key.as_str().to_owned(), value));
            Ok(())
        }
    }
    let mut collect = Collect(Vec::new());
    // Visiting our own sources cannot fail; a foreign one that does loses only its fields.
    let _ = record.key_values().visit(&mut collect);
    collect.0
}

/// `2026-01-01T00:00:00.000Z WARN  wss::outcomes <message> tenant=acme attempt=2 …`
fn text_line(now: SystemTime, message: &fmt::Arguments<'_>, record: &Record<'_>) -> String {
    let mut line = format!("{} {:<5} {} {}", humantime::format_rfc3339_millis(now), record.level(), record.target(), message);
    for (key, value) in fields(record) {
        let text = match value {
            serde_json::Value::String(s) if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') => {
                format!("{s:?}")
            }
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        line.push_str(&format!(" {key}={text}"));
    }
    line
}

/// One JSON object: `ts`, `level`, `target`, `msg`, then the record's fields as top-level keys.
fn json_line(now: SystemTime, message: &fmt::Arguments<'_>, record: &Record<'_>) -> String {
    let mut line = serde_json::Map::new();
    line.insert("ts".into(), humantime::format_rfc3339_millis(now).to_string().into());
    line.insert("level".into(), record.level().as_str().into());
    line.insert("target".into(), record.target().into());
    line.insert("msg".into(), message.to_string().into());
    for (key, value) in fields(record) {
        let key = if OWN_KEYS.contains(&key.as_str()) { format!("kv_{key}") } else { key };
        line.insert(key, value);
    }
    serde_json::Value::Object(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_never_log_below_info() {
        use log::Level::*;
        for target in ["ureq", "ureq_proto::client", "rustls::client", "h2", "hyper", "tonic::transport", "redis", "wssx"] {
            assert!(shown(target, Info) && shown(target, Error), "{target}");
            assert!(!shown(target, Debug) && !shown(target, Trace), "{target}");
        }
        assert!(shown("wss", Trace) && shown("wss::outcomes", Trace) && shown("wss::reader", Debug));
    }

    #[test]
    fn filters_parse_like_rust_log() {
        let (default, targets) = parse_filter("warn,wss::outcomes=debug").unwrap();
        assert_eq!(default, LevelFilter::Warn);
        assert_eq!(targets, [("wss::outcomes".to_string(), LevelFilter::Debug)]);
        assert!(parse_filter("loud").is_err());
    }

    /// Formats one record the way `init` would, with the given key-values.
    fn formatted(kvs: &[(&str, kv::Value<'_>)], line: fn(SystemTime, &fmt::Arguments<'_>, &Record<'_>) -> String) -> String {
        let message = format_args!("attempt 2 of event evt-1 failed: HTTP 500");
        let record = Record::builder().level(log::Level::Warn).target("wss::outcomes").args(message).key_values(&kvs).build();
        line(SystemTime::UNIX_EPOCH, record.args(), &record)
    }

    #[test]
    fn json_lines_carry_the_fields_as_top_level_keys() {
        let kvs = [
            ("tenant", kv::Value::from("acme")),
            ("webhook", kv::Value::from("wh_1")),
            ("event_id", kv::Value::from("evt-1")),
            ("attempt", kv::Value::from(2u32)),
            ("outcome", kv::Value::from("retrying")),
            ("msg", kv::Value::from("shadow")),
        ];
        let line = formatted(&kvs, json_line);
        assert!(!line.contains('\n'), "one line: {line}");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["level"], "WARN");
        assert_eq!(json["target"], "wss::outcomes");
        assert_eq!(json["msg"], "attempt 2 of event evt-1 failed: HTTP 500", "a field cannot replace the message");
        assert_eq!(json["kv_msg"], "shadow");
        assert_eq!(json["tenant"], "acme");
        assert_eq!(json["webhook"], "wh_1");
        assert_eq!(json["event_id"], "evt-1");
        assert_eq!(json["attempt"], 2, "numbers stay numbers");
        assert_eq!(json["outcome"], "retrying");
    }

    #[test]
    fn text_lines_append_the_fields_readably() {
        let kvs =
            [("tenant", kv::Value::from("acme")), ("attempt", kv::Value::from(2u32)), ("reason", kv::Value::from("no attempts left"))];
        assert_eq!(
            formatted(&kvs, text_line),
            r#"1970-01-01T00:00:00.000Z WARN  wss::outcomes attempt 2 of event evt-1 failed: HTTP 500 tenant=acme attempt=2 reason="no attempts left""#
        );
        assert_eq!(formatted(&[], text_line), "1970-01-01T00:00:00.000Z WARN  wss::outcomes attempt 2 of event evt-1 failed: HTTP 500");
    }
}
