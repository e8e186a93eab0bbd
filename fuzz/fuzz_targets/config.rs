//! The config loader: `FileConfig::from_toml`, then `resolve` with environment overrides, must
//! answer Ok or an error naming the key, never panic; and what `check-config` prints
//! (`to_masked_toml`) must read back as a config file.
//!
//! The input is the file's text. Comment lines `#env NAME=VALUE` (still TOML comments, so the
//! seeds stay valid files) set the environment overrides, e.g. `#env AMITY_API_KEY=k`.
#![no_main]

use std::path::Path;

use amity_gateway::config::{Env, FileConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let env = env_of(&text);
    let path = Path::new("fuzz.toml");
    let Ok(file) = FileConfig::from_toml(&text, path) else {
        return;
    };
    for env in [Env::default(), env] {
        let mut applied = file.clone();
        if applied.apply_env(&env).is_ok() {
            let shown = applied.to_masked_toml();
            if let Err(e) = FileConfig::from_toml(&shown, path) {
                panic!("check-config prints what does not load: {e}\n{shown}");
            }
        }
        let resolved = file.clone().resolve(&env);
        // The error is shown to the operator: it must render.
        if let Err(e) = resolved {
            let _ = e.to_string();
        }
    }
});

/// The overrides named by `#env NAME=VALUE` lines (empty values count as unset, as in
/// `Env::from_process`).
fn env_of(text: &str) -> Env {
    let mut env = Env::default();
    for line in text.lines() {
        let Some((name, value)) = line.strip_prefix("#env ").and_then(|l| l.split_once('=')) else {
            continue;
        };
        let value = Some(value.to_owned()).filter(|v| !v.is_empty());
        let slot = match name {
            "GATEWAY_LISTEN" => &mut env.listen,
            "GATEWAY_ADMIN_LISTEN" => &mut env.admin_listen,
            "GATEWAY_UPSTREAM_URL" => &mut env.upstream_url,
            "AMITY_API_KEY" => &mut env.api_key,
            "GATEWAY_API_KEY_FILE" => &mut env.api_key_file,
            "GATEWAY_TLS_CERT_FILE" => &mut env.tls_cert_file,
            "GATEWAY_TLS_KEY_FILE" => &mut env.tls_key_file,
            "GATEWAY_REDIS_URL" => &mut env.redis_url,
            "GATEWAY_RATE_LIMIT_BACKEND" => &mut env.rate_limit_backend,
            _ => continue,
        };
        *slot = value;
    }
    env
}
