//! Call-layer settings of a route: frame tracking, proxy pings, stalls.
//!
//! Globals come from `--frames`, `--ping-interval`, `--ping-timeout`,
//! `--stall-after` (or the config file's `frames`, `ping_interval`,
//! `ping_timeout`, `stall_after`); a route's own `frames`, `ping_interval`
//! and `ping_timeout` override them.

use std::time::Duration;

/// What the call layer does on one route's tunnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSpec {
    /// Follow WebSocket frames (`false`: a pure byte relay, no pings, no close codes).
    pub frames: bool,
    /// Ping a leg silent this long; `None` (`0`): no pings.
    pub ping_interval: Option<Duration>,
    /// A pinged leg silent this long is dead.
    pub ping_timeout: Duration,
    /// A streaming direction silent this long is stalled.
    pub stall_after: Duration,
}

impl Default for CallSpec {
    fn default() -> Self {
        CallSpec {
            frames: true,
            ping_interval: Some(Duration::from_secs(20)),
            ping_timeout: Duration::from_secs(10),
            stall_after: Duration::from_secs(2),
        }
    }
}

use super::raw::{RawConfig, RawRoute};
use super::{ConfigError, parse_duration};
use crate::cli::RunArgs;

/// The global call settings: flag, else file, else default.
pub fn global(a: &RunArgs, f: &RawConfig) -> Result<CallSpec, ConfigError> {
    let d = CallSpec::default();
    let frames = match (a.frames.as_deref(), f.frames) {
        (Some("on"), _) => true,
        (Some("off"), _) => false,
        (Some(other), _) => {
            return Err(ConfigError::invalid(
                "--frames",
                other,
                "expected on or off",
            ));
        }
        (None, Some(b)) => b,
        (None, None) => d.frames,
    };
    let interval = pick(&a.ping_interval, &f.ping_interval, "ping-interval", "20s")?;
    let timeout = pick(&a.ping_timeout, &f.ping_timeout, "ping-timeout", "10s")?;
    let stall_after = pick(&a.stall_after, &f.stall_after, "stall-after", "2s")?;
    if stall_after.is_zero() {
        let field = source(a.stall_after.is_some(), "stall-after");
        return Err(ConfigError::invalid(&field, "0", "must be more than 0"));
    }
    Ok(CallSpec {
        frames,
        ping_interval: pings(interval, timeout),
        ping_timeout: timeout,
        stall_after,
    })
}

/// A route's call settings: its own keys over the global ones.
pub fn route(r: &RawRoute, global: &CallSpec, label: &str) -> Result<CallSpec, ConfigError> {
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

fn source(from_flag: bool, flag: &str) -> String {
    if from_flag {
        format!("--{flag}")
    } else {
        format!("`{}` in the config file", flag.replace('-', "_"))
    }
}

fn pick(
    flag: &Option<String>,
    file: &Option<String>,
    name: &str,
    default: &str,
) -> Result<Duration, ConfigError> {
    match (flag, file) {
        (Some(v), _) => parse_duration(&source(true, name), v),
        (None, Some(v)) => parse_duration(&source(false, name), v),
        (None, None) => parse_duration(&format!("default of --{name}"), default),
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
