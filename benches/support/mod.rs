//! What several benches share: the gateway's state as in production, with a key and an
//! upstream address that is never dialled (the benches plug in an in-memory upstream).

use amity_gateway::config::{FileConfig, Secret};
use amity_gateway::stack::Shared;

/// Default configuration; one deviceId may be sent throughout, so it gets a budget the bench
/// cannot spend and every request takes the rate limiter's admitted path (its cost included)
/// rather than turning into 429s.
pub fn shared() -> Shared {
    let mut f = FileConfig::default();
    f.upstream.url = "http://127.0.0.1:9".into();
    f.api_key.value = Some(Secret("bench-key".into()));
    f.rate_limit.requests = amity_gateway::ratelimit::MAX_REQUESTS;
    f.rate_limit.window_secs = 1;
    Shared::new(f.resolve(&Default::default()).expect("config")).expect("shared")
}
