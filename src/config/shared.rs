//! What every configuration section speaks: the error type, the checks each section reports
//! through, and the masked secret. A leaf: it imports nothing from the crate, so the sections
//! (`config`, `cache::settings`, `ratelimit::config`) and the layers that read their values
//! can all use it without importing each other.

use std::fmt;
use std::path::PathBuf;

use http::HeaderValue;
use serde::{Deserialize, Serialize};

/// Errors while loading configuration; the message names the offending key or value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The error for a bad value of `key`; every config section reports through it.
pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// `v` if it is greater than 0, else an error naming `key`.
pub(crate) fn positive(key: &'static str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(v)
    }
}

/// A secret read from config: `Debug` and `Serialize` never show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("****")
    }
}

/// The API key as the header it is sent in, marked sensitive so that no debug output shows
/// it. Checked when the config is validated and again whenever a key file is re-read; the
/// message never quotes the key.
pub fn key_header(key: &str) -> Result<HeaderValue, String> {
    let mut v = HeaderValue::from_str(key)
        .map_err(|_| "the key contains characters not allowed in a header".to_owned())?;
    v.set_sensitive(true);
    Ok(v)
}
