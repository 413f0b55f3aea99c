//! The TOML config loader, end to end: a file of arbitrary bytes is read with
//! `--config`, parsed, merged and validated like a start or a reload would.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("shunt-fuzz-config-{}.toml", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let path = path.to_string_lossy().into_owned();
    let _ = shunt::Config::from_args(["--config", path.as_str(), "--no-watch"]);
});
