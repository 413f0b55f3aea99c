//! `admin_hosts` (`--admin-host`): the extra `Host` names the admin listener
//! answers, besides IP addresses and `localhost` (see `crate::admin::host`).

use super::ConfigError;
use super::parse::field_name;

/// The names of `--admin-host` (or of `admin_hosts` in the file, `field`
/// saying which), each checked and lowercased, without a trailing dot.
/// The flag's values come through here too, when the flags are read into
/// `Overrides`, so a bad `--admin-host` is refused with the flag's name.
pub(super) fn host_names(field: &str, names: &[String]) -> Result<Vec<String>, ConfigError> {
    names.iter().map(|n| host_name(field, n)).collect()
}

/// The flag's names if it was given, else the file's.
///
/// The list only adds names: IP addresses and `localhost` are always
/// answered, so an empty list (the default) keeps the admin API reachable
/// by address while refusing a rebinding attacker's DNS name.
pub(super) fn admin_hosts(
    flag: Option<&[String]>,
    file: &[String],
) -> Result<Vec<String>, ConfigError> {
    match flag {
        Some(names) => Ok(names.to_vec()),
        None => host_names(&field_name(false, "admin-host", "admin_hosts"), file),
    }
}

/// A DNS name: labels of letters, digits and `-`, at most 253 characters.
///
/// The trailing dot of a fully qualified name is dropped and the name
/// lower-cased, since `Host` headers are compared that way. No ports, no
/// schemes, no wildcards: each name is matched exactly.
fn host_name(field: &str, value: &str) -> Result<String, ConfigError> {
    let name = value.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(ConfigError::invalid(
            field,
            value,
            "expected a host name such as shunt.internal (no scheme, no port)",
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// `--admin-host` may repeat and split on commas; names are normalized; the
    /// default is an empty list.
    #[test]
    fn flag_is_repeatable_and_takes_commas() {
        let c = Config::from_args([
            "--admin-host",
            "Shunt.Internal.",
            "--admin-host",
            "a.example,b.example",
        ])
        .unwrap();
        assert_eq!(c.admin_hosts, ["shunt.internal", "a.example", "b.example"]);
        assert!(
            Config::from_args::<_, &str>([])
                .unwrap()
                .admin_hosts
                .is_empty()
        );
    }

    /// Each malformed name is refused, and the error names the flag.
    #[test]
    fn names_with_ports_schemes_or_spaces_are_refused() {
        for bad in [
            "shunt.internal:9901",
            "http://shunt",
            "a b",
            "",
            "-a.example",
            "a..b",
        ] {
            let e = Config::from_args([format!("--admin-host={bad}")])
                .unwrap_err()
                .to_string();
            assert!(e.contains("--admin-host"), "{bad:?}: {e}");
        }
    }
}
