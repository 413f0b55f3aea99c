//! Call-layer settings of a route: frame tracking, proxy pings, stalls.
//!
//! Globals come from `--frames`, `--ping-interval`, `--ping-timeout`,
//! `--stall-after` (or the config file's `frames`, `ping_interval`,
//! `ping_timeout`, `stall_after`); a route's own `frames`, `ping_interval`
//! and `ping_timeout` override them.
//!
//! `backend_loss` (with `reattach_within`, `replay_messages`, `replay_bytes`,
//! `reattach_buffer`) is per route only.

use std::time::Duration;

use super::ConfigError;
use super::parse::{parse_duration, parse_size};
use super::raw::{RawConfig, RawRoute};
use super::spec::{BackendLoss, CallSpec, ReattachSpec};
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
        backend_loss: BackendLoss::Close,
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
    let frames = r.frames.unwrap_or(global.frames);
    Ok(CallSpec {
        frames,
        ping_interval,
        ping_timeout: timeout,
        stall_after: global.stall_after,
        backend_loss: backend_loss(r, frames, &key)?,
    })
}

/// A route's `backend_loss` and, for `reattach`, its settings (each checked;
/// a reattach key on a route that does not reattach is an error, not ignored).
fn backend_loss(
    r: &RawRoute,
    frames: bool,
    key: &dyn Fn(&str) -> String,
) -> Result<BackendLoss, ConfigError> {
    let reattach = match r.backend_loss.as_deref() {
        None | Some("close") => false,
        Some("reattach") => true,
        Some(other) => {
            return Err(ConfigError::invalid(
                &key("backend_loss"),
                other,
                "expected close or reattach",
            ));
        }
    };
    let given = [
        ("reattach_within", r.reattach_within.clone()),
        ("replay_messages", r.replay_messages.map(|n| n.to_string())),
        ("replay_bytes", r.replay_bytes.clone()),
        ("reattach_buffer", r.reattach_buffer.clone()),
    ];
    if !reattach {
        if let Some((name, Some(value))) = given.iter().find(|(_, v)| v.is_some()) {
            return Err(ConfigError::invalid(
                &key(name),
                value,
                "applies only with backend_loss = \"reattach\"",
            ));
        }
        return Ok(BackendLoss::Close);
    }
    if !frames {
        return Err(ConfigError::invalid(
            &key("backend_loss"),
            "reattach",
            "needs frames followed (the route says frames = false)",
        ));
    }
    let d = ReattachSpec::default();
    let within = match &r.reattach_within {
        Some(v) => parse_duration(&key("reattach_within"), v)?,
        None => d.within,
    };
    if within.is_zero() {
        return Err(ConfigError::invalid(
            &key("reattach_within"),
            "0",
            "must be more than 0",
        ));
    }
    let replay_messages = r.replay_messages.unwrap_or(d.replay_messages);
    if replay_messages > 64 {
        return Err(ConfigError::invalid(
            &key("replay_messages"),
            replay_messages,
            "must be between 0 and 64",
        ));
    }
    let size = |name: &str, v: &Option<String>, default: u32, max: u64| {
        let n = match v {
            Some(v) => parse_size(&key(name), v)?,
            None => return Ok(default),
        };
        if n == 0 || n > max {
            return Err(ConfigError::invalid(
                &key(name),
                v.as_deref().unwrap_or_default(),
                format!("must be between 1 B and {} MiB", max >> 20),
            ));
        }
        Ok(n as u32)
    };
    Ok(BackendLoss::Reattach(ReattachSpec {
        within,
        replay_messages,
        replay_bytes: size("replay_bytes", &r.replay_bytes, d.replay_bytes, 16 << 20)?,
        buffer: size("reattach_buffer", &r.reattach_buffer, d.buffer, 64 << 20)?,
    }))
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

    #[test]
    fn backend_loss_keys() {
        let dir = std::env::temp_dir().join(format!("shunt-loss-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("shunt.toml");
        let load = |routes: &str| {
            std::fs::write(&file, routes).unwrap();
            Config::from_args(["--config", file.to_str().unwrap()])
        };
        let c = load(
            "[[routes]]\npath = \"/a\"\nvia = [\"direct\"]\nbackend_loss = \"reattach\"\n\
             [[routes]]\npath = \"/b\"\nvia = [\"direct\"]\nbackend_loss = \"reattach\"\n\
             reattach_within = \"3s\"\nreplay_messages = 2\nreplay_bytes = \"1 KiB\"\nreattach_buffer = 4096\n\
             [[routes]]\npath = \"/c\"\nvia = [\"direct\"]\n",
        )
        .unwrap();
        let by = |p: &str| c.routes.iter().find(|r| r.path == p).unwrap().calls;
        assert_eq!(
            by("/a").backend_loss,
            BackendLoss::Reattach(ReattachSpec::default())
        );
        assert_eq!(
            by("/b").backend_loss,
            BackendLoss::Reattach(ReattachSpec {
                within: Duration::from_secs(3),
                replay_messages: 2,
                replay_bytes: 1024,
                buffer: 4096,
            })
        );
        assert_eq!(by("/c").backend_loss, BackendLoss::Close);
        for (bad, names) in [
            ("backend_loss = \"retry\"", "backend_loss"),
            ("reattach_within = \"2s\"", "reattach_within"),
            (
                "backend_loss = \"reattach\"\nframes = false",
                "backend_loss",
            ),
            (
                "backend_loss = \"reattach\"\nreattach_within = \"0s\"",
                "reattach_within",
            ),
            (
                "backend_loss = \"reattach\"\nreplay_bytes = \"64 parsecs\"",
                "replay_bytes",
            ),
            (
                "backend_loss = \"reattach\"\nreattach_buffer = 0",
                "reattach_buffer",
            ),
            (
                "backend_loss = \"reattach\"\nreplay_messages = 1000",
                "replay_messages",
            ),
        ] {
            let err = load(&format!(
                "[[routes]]\npath = \"/a\"\nvia = [\"direct\"]\n{bad}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(names), "{bad}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
