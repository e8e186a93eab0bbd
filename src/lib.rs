//! amity-gateway: a tower-based gateway in front of the Amity Social Cloud session endpoint.
//!
//! See `DESIGN.md`-style notes in each module: [`stack`] says why each layer sits where it does.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod app;
pub mod body;
pub mod cache;
pub mod config;
pub mod error;
mod io;
pub mod layers;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod ratelimit;
pub mod redis_link;
pub mod reload;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod session;
pub mod sim;
pub mod stack;
#[cfg(test)]
mod test_util;
pub mod tls;
pub mod upstream;

pub mod wire;

pub use error::{ApiError, BoxError, GatewayError};
