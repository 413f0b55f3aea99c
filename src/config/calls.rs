//! Call-layer settings of a route: frame tracking, proxy pings, stalls.
//!
//! Globals come from `--frames`, `--ping-interval`, `--ping-timeout`,
//! `--stall-after` (or the config file's `frames`, `ping_interval`,
//! `ping_timeout`, `stall_after`); a route's own `frames`, `ping_interval`
//! and `ping_timeout` override them.

use std::time::Duration;

use super::ConfigError;
use super::parse::parse_duration;
use super::raw::{RawConfig, RawRoute};
use super::spec::CallSpec;
use crate::cli::RunArgs;

/// The call-layer flags, parsed (each error names its flag).
#[derive(Debug, Clone, Default)]
pub(crate) struct CallFlags {
    /// `--frames on|off`.
    pub frames: Option<bool>,
    /// `--ping-interval`.
    pub ping_interval: Option<Duration>,
    /// `--ping-timeout`.
    pub ping_timeout: Option<Duration>,
    /// `--stall-after`.
    pub stall_after: Option<Duration>,
}

impl CallFlags {
    /// Parse the call-layer flags of `a`.
    pub(crate) fn parse(a: &RunArgs) -> Result<CallFlags, ConfigError> {
        let duration = |flag: &str, v: &Option<String>| {
            v.as_deref()
                .map(|v| parse_duration(&format!("--{flag}"), v))
                .transpose()
        };
        let frames = match a.frames.as_deref() {
            None => None,
            Some("on") => Some(true),
            Some("off") => Some(false),
            Some(other) => {
                return Err(ConfigError::invalid(
                    "--frames",
                    other,
                    "expected on or off",
                ));
            }
        };
        Ok(CallFlags {
            frames,
            ping_interval: duration("ping-interval", &a.ping_interval)?,
            ping_timeout: duration("ping-timeout", &a.ping_timeout)?,
            stall_after: duration("stall-after", &a.stall_after)?,
        })
    }
}

/// The global call settings: flag, else file, else default.
pub(crate) fn global(flags: &CallFlags, f: &RawConfig) -> Result<CallSpec, ConfigError> {
    let d = CallSpec::default();
    let interval = pick(flags.ping_interval, &f.ping_interval, "ping_interval")?
        .unwrap_or(Duration::from_secs(20));
    let timeout =
        pick(flags.ping_timeout, &f.ping_timeout, "ping_timeout")?.unwrap_or(d.ping_timeout);
    let stall_after =
        pick(flags.stall_after, &f.stall_after, "stall_after")?.unwrap_or(d.stall_after);
    if stall_after.is_zero() {
        let field = if flags.stall_after.is_some() {
            "--stall-after".to_owned()
        } else {
            "`stall_after` in the config file".to_owned()
        };
        return Err(ConfigError::invalid(&field, "0", "must be more than 0"));
    }
    Ok(CallSpec {
        frames: flags.frames.or(f.frames).unwrap_or(d.frames),
        ping_interval: pings(interval, timeout),
        ping_timeout: timeout,
        stall_after,
    })
}

/// A route's call settings: its own keys over the global ones.
pub(crate) fn route(r: &RawRoute, global: &CallSpec, label: &str) -> Result<CallSpec, ConfigError> {
    let key = |k: &str| format!("`{k}` of route {label}");
    let interval = match &r.ping_interval {
        Some(v) => parse_duration(&key("ping_interval"), v)?,
        None => global.ping_interval.unwrap_or_default(),
    };
    let timeout = match &r.ping_timeout {
        Some(v) => parse_duration(&key("ping_timeout"), v)?,
        None => global.ping_timeout,
    };
    // A route that names neither keeps the global on/off as it is.
    let ping_interval = if r.ping_interval.is_none() && r.ping_timeout.is_none() {
        global.ping_interval
    } else {
        pings(interval, timeout)
    };
    Ok(CallSpec {
        frames: r.frames.unwrap_or(global.frames),
        ping_interval,
        ping_timeout: timeout,
        stall_after: global.stall_after,
    })
}

/// Pings run unless either setting is 0.
fn pings(interval: Duration, timeout: Duration) -> Option<Duration> {
    (!interval.is_zero() && !timeout.is_zero()).then_some(interval)
}

/// The flag's value, else the file key's (parsed and named), else `None`.
fn pick(
    flag: Option<Duration>,
    file: &Option<String>,
    key: &str,
) -> Result<Option<Duration>, ConfigError> {
    match (flag, file) {
        (Some(v), _) => Ok(Some(v)),
        (None, Some(v)) => parse_duration(&format!("`{key}` in the config file"), v).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn flags_file_and_routes() {
        let c = Config::from_args(["--ping-interval", "200ms", "--ping-timeout", "300ms"]).unwrap();
        let spec = c.routes[0].calls;
        assert_eq!(spec.ping_interval, Some(Duration::from_millis(200)));
        assert_eq!(spec.ping_timeout, Duration::from_millis(300));
        assert!(spec.frames);
        assert_eq!(
            spec.to_string(),
            "frames on, ping 200ms timeout 300ms, stall 2s"
        );
        let off = Config::from_args(["--ping-interval", "0", "--frames", "off"]).unwrap();
        assert_eq!(off.routes[0].calls.ping_interval, None);
        assert!(!off.routes[0].calls.frames);
        let err = Config::from_args(["--frames", "maybe"]).unwrap_err();
        assert!(err.to_string().contains("--frames"), "{err}");
        let err = Config::from_args(["--stall-after", "0"]).unwrap_err();
        assert!(err.to_string().contains("--stall-after"), "{err}");

        let dir = std::env::temp_dir().join(format!("shunt-calls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("shunt.toml");
        std::fs::write(
            &file,
            "ping_interval = \"5s\"\nstall_after = \"3s\"\n\
             [[routes]]\npath = \"/bulk\"\nvia = [\"direct\"]\nframes = false\n\
             [[routes]]\npath = \"/audio\"\nvia = [\"direct\"]\nping_interval = \"1s\"\nping_timeout = \"2s\"\n",
        )
        .unwrap();
        let c = Config::from_args(["--config", file.to_str().unwrap()]).unwrap();
        let by = |p: &str| c.routes.iter().find(|r| r.path == p).unwrap().calls;
        assert!(!by("/bulk").frames);
        assert_eq!(by("/bulk").ping_interval, Some(Duration::from_secs(5)));
        assert_eq!(by("/bulk").stall_after, Duration::from_secs(3));
        assert_eq!(by("/audio").ping_interval, Some(Duration::from_secs(1)));
        assert_eq!(by("/audio").ping_timeout, Duration::from_secs(2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
