//! Logging, set up once by `main` with fern: human-readable lines by default, JSON lines with
//! `--log-format json`. The level filter is `RUST_LOG`-style (`info`, `warn,wss::outcomes=debug`)
//! from `WSS_LOG_LEVEL`, or `RUST_LOG` when that is set. Every stage logs under its own target
//! (`wss::reader`, `wss::outcomes`, …). Secrets and tokens are never passed to a log macro.

use std::time::SystemTime;

use log::LevelFilter;

use crate::config::LogFormat;

/// Parses `info` or `warn,wss::outcomes=debug` into a default level and per-target levels.
pub fn parse_filter(spec: &str) -> Result<(LevelFilter, Vec<(String, LevelFilter)>), String> {
    let mut default = LevelFilter::Info;
    let mut targets = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((target, level)) => {
                let level = level.trim().parse().map_err(|_| format!("{level:?} is not a log level (error, warn, info, debug, trace, off)"))?;
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
    let dispatch = match format {
        LogFormat::Text => dispatch.format(|out, message, record| {
            out.finish(format_args!(
                "{} {:<5} {} {}",
                humantime::format_rfc3339_millis(SystemTime::now()),
                record.level(),
                record.target(),
                message
            ))
        }),
        LogFormat::Json => dispatch.format(|out, message, record| {
            let line = serde_json::json!({
                "ts": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": message.to_string(),
            });
            out.finish(format_args!("{line}"))
        }),
    };
    dispatch.chain(std::io::stderr()).apply().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_like_rust_log() {
        let (default, targets) = parse_filter("warn,wss::outcomes=debug").unwrap();
        assert_eq!(default, LevelFilter::Warn);
        assert_eq!(targets, [("wss::outcomes".to_string(), LevelFilter::Debug)]);
        assert!(parse_filter("loud").is_err());
    }
}
