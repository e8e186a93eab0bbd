//! One middleware per module, shaped like tower-http: `XLayer` holds config and is `Clone`,
//! `X<S>` holds `inner` plus shared state behind `Arc`.

pub mod admission;
pub mod api_key;
pub mod arrival;
pub mod body;
pub mod cors;
pub mod forward;
pub mod framing;
pub mod guarded;
pub mod hold;
pub mod lookup_cache;
pub mod pass;
pub mod rate_limit;
pub mod rescue;
pub mod session_observer;
pub mod trace;
pub mod validate;
