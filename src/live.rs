//! Configuration reloaded without a restart: on SIGHUP, and when the config file changes on
//! disk, `gateway.toml` is read again with its environment overrides and, if it is valid in
//! full, the client-facing service is rebuilt from it and swapped in whole.
//!
//! - **What a request sees.** hyper is handed a [`Live`] service, which takes the service in
//!   use when a request starts and runs the request on it to the end: requests in flight
//!   finish on the configuration they started with, the next ones run on the new one. The swap
//!   is one atomic pointer store (`arc-swap`); a request pays one atomic load for it.
//! - **What is kept.** The long-lived parts are carried over when their own settings are
//!   unchanged: the rate limiter (its counters), the lookup cache (its entries), the API key
//!   source, the metrics. A changed section gets a new part, which starts empty. The upstream
//!   client (its pool) is kept by the builder while `[upstream]` is unchanged. Redis links
//!   belong to their part: a changed `[rate_limit.redis]` or `[cache.shared]` (or the limiter
//!   URL the latter falls back to) brings a new limiter or cache with a new link; a new shared
//!   cache reads the other replicas' facts afresh before trusting their tokens.
//! - **What is refused.** Settings fixed when the process started (the listeners, the runtime,
//!   TLS files, the log subscriber, the HTTP connection settings, the drain budget) cannot
//!   change by reload: a file changing one is refused as a whole, with a message naming it, so
//!   the running configuration is always exactly one validated file. `gateway_config_info`'s
//!   hash names it.
//! - **A bad file** (unreadable, not TOML, a misspelt key, an invalid value) keeps the running
//!   configuration; the reason is logged (parse errors give line and column, never the text of
//!   the line, which may hold a secret) and `gateway_config_reloads_total{result="error"}` counts
//!   it. A file that is fixed later is picked up by its next change or SIGHUP.
//! - **Noticing changes.** A background task polls the file's identity (device, inode, size,
//!   mtime; see [`crate::reload::Stamp`]) once a second, besides waiting for SIGHUP. The key
//!   file is instead checked on each use because its value is used per request; the config is
//!   not read per request, and a reload (parse, validate, build a stack) is work better kept
//!   off the request path, so a timer is the cheaper way. A ConfigMap update (a symlink swap)
//!   or a rename is seen within a second.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use futures_util::future::Either;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use crate::cache::LookupCache;
use crate::config::{Config, Env, FileConfig};
use crate::layers::api_key::ApiKey;
use crate::ratelimit::RateLimiter;
use crate::reload::Stamp;
use crate::stack::Shared;

/// How often the config file's identity is checked.
pub const POLL: Duration = Duration::from_secs(1);

/// The service in use, shared between the listener (which reads it per request) and the
/// reloader (which replaces it).
pub type Current<S> = Arc<ArcSwap<S>>;

/// The client-facing service as hyper sees it: every request runs on the service in use when
/// it starts. Each connection holds a handle of its own (cloning one is an `Arc` clone), which
/// keeps its own copy of the service in use and takes a new one only when a reload has swapped
/// in another: a request pays one atomic load, not a clone of the whole stack.
///
/// - A connection left idle after a reload keeps the stack it last used alive until its next
///   request or its end (bounded by the idle timeouts), and with it whatever only that stack
///   still holds: a replaced upstream pool and its idle connections, a replaced limiter or
///   cache and their Redis links.
/// - The copy outlives a request whose call panicked (rescue turns the panic into a 500): no
///   layer's `call` leaves its service half-updated, so the next request runs on it as is.
pub struct Live<S> {
    current: Current<S>,
    /// The service this handle last ran a request on, and the one it was cloned from.
    mine: Option<(Arc<S>, S)>,
}

impl<S> Clone for Live<S> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
            mine: None,
        }
    }
}

impl<S> Live<S> {
    pub fn new(current: Current<S>) -> Self {
        Self {
            current,
            mine: None,
        }
    }
}

impl<S, R> Service<R> for Live<S>
where
    S: Service<R, Error = Infallible> + Clone,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Either<S::Future, Oneshot<S, R>>;

    /// Always ready: readiness belongs to the service a request will run on ([`call_ready`]).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        let now = self.current.load();
        if let Some((from, svc)) = &mut self.mine {
            if Arc::ptr_eq(from, &now) {
                return call_ready(svc, req);
            }
        }
        let svc = S::clone(&now);
        let (_, svc) = self.mine.insert((Guard::into_inner(now), svc));
        call_ready(svc, req)
    }
}

/// Calls `svc` at once when it is ready now (the gateway's stacks always are: readiness is
/// settled per route chain, below the router), else on a clone of its own that waits for it.
/// A service whose `poll_ready` reserves something (a `Buffer` slot, a concurrency permit)
/// must not be called this way: a reservation made under the no-op waker would sit on the
/// idle copy.
pub fn call_ready<S, R>(svc: &mut S, req: R) -> Either<S::Future, Oneshot<S, R>>
where
    S: Service<R> + Clone,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => Either::Left(svc.call(req)),
        _ => Either::Right(svc.clone().oneshot(req)),
    }
}

/// Builds the client-facing service from the shared parts (and their config). Called once at
/// start and once per successful reload; it may keep state of its own between calls (the
/// upstream client, while `[upstream]` is unchanged).
pub type Build<S> = Box<dyn FnMut(&Shared) -> S + Send>;

/// Re-reads the config file and swaps in what it builds.
pub struct Reloader<S> {
    path: PathBuf,
    shared: Current<Shared>,
    service: Current<S>,
    build: Build<S>,
}

/// Which long-lived parts a reload kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub cache: bool,
    pub rate_limit: bool,
    pub api_key: bool,
}

impl<S> Reloader<S> {
    /// Builds the first service from `shared`.
    pub fn new(path: PathBuf, shared: Current<Shared>, mut build: Build<S>) -> Self {
        let first = shared.load_full();
        let service = Arc::new(ArcSwap::from_pointee(build(&first)));
        Self {
            path,
            shared,
            service,
            build,
        }
    }

    /// The service to hand to the listener.
    pub fn live(&self) -> Live<S> {
        Live::new(self.service.clone())
    }

    /// Reads the file again; swaps in the new config if it is valid and changes nothing that
    /// needs a restart. `trigger` ("sighup", "file") goes into the log line. Returns what was
    /// kept, or why nothing changed (also logged and counted).
    pub fn reload(&mut self, trigger: &str) -> Result<Kept, String> {
        let running = self.shared.load_full();
        let next = FileConfig::load_effective(&self.path, &Env::from_process())
            .map_err(|e| e.to_string())
            .and_then(|(_, config)| {
                let restart = needs_restart(&running.config, &config);
                if restart.is_empty() {
                    carry_over(&running, config)
                } else {
                    Err(format!(
                        "{} cannot change without a restart",
                        restart.join(", ")
                    ))
                }
            });
        let metrics = running.metrics.clone();
        match next {
            Ok((next, kept)) => {
                let hash = next.config.hash.clone();
                let service = (self.build)(&next);
                let old_limiter = running.rate_limit.as_ref().map(|l| l.stats());
                metrics.replace_parts(
                    (!kept.cache).then_some(&*running.cache),
                    old_limiter.as_deref().filter(|_| !kept.rate_limit),
                    || {
                        self.service.store(Arc::new(service));
                        self.shared.store(Arc::new(next));
                    },
                );
                metrics.config_reloaded(true);
                metrics.config_in_use(&hash);
                tracing::info!(
                    trigger,
                    hash,
                    cache_kept = kept.cache,
                    rate_limit_kept = kept.rate_limit,
                    path = %self.path.display(),
                    "config reloaded"
                );
                Ok(kept)
            }
            Err(error) => {
                metrics.config_reloaded(false);
                tracing::warn!(
                    trigger,
                    %error,
                    hash = running.config.hash,
                    path = %self.path.display(),
                    "config reload failed; the running config is kept"
                );
                Err(error)
            }
        }
    }
}

/// The settings read once at start-up that differ between `old` and `new`, as
/// `key (old to new)` where the values are no secret, else the key alone.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    if old.listen != new.listen {
        changed.push(format!("server.listen ({} to {})", old.listen, new.listen));
    }
    if old.admin_listen != new.admin_listen {
        changed.push(format!(
            "server.admin_listen ({} to {})",
            old.admin_listen, new.admin_listen
        ));
    }
    let fixed: [(&str, bool); 7] = [
        (
            "server.worker_threads",
            old.worker_threads != new.worker_threads,
        ),
        (
            "server.drain_timeout_secs",
            old.drain_timeout != new.drain_timeout,
        ),
        (
            "server.header_read_timeout_ms",
            old.header_read_timeout != new.header_read_timeout,
        ),
        ("[tls]", old.tls != new.tls),
        (
            "[server] connection limits and timeouts (max_connections*, max_streams_per_connection, http2_*, first_bytes_timeout_ms, drain_idle_grace_ms, send_timeout_ms)",
            old.connections != new.connections,
        ),
        ("log.format", old.log.format != new.log.format),
        ("log.level", old.log.level != new.log.level),
    ];
    changed.extend(
        fixed
            .iter()
            .filter(|(_, differs)| *differs)
            .map(|(key, _)| (*key).to_owned()),
    );
    changed
}

/// The parts for `config`: the running ones where their settings are unchanged, new ones
/// elsewhere. Fails (nothing swapped) when a new part cannot be built, e.g. a key file that
/// cannot be read.
pub fn carry_over(running: &Shared, config: Config) -> Result<(Shared, Kept), String> {
    let kept = Kept {
        cache: running.config.cache == config.cache,
        rate_limit: running.config.rate_limit == config.rate_limit,
        api_key: running.config.api_key == config.api_key,
    };
    let api_key = if kept.api_key {
        running.api_key.clone()
    } else {
        Arc::new(ApiKey::load(&config.api_key)?)
    };
    let cache = if kept.cache {
        running.cache.clone()
    } else {
        LookupCache::start(&config.cache)
    };
    let rate_limit = match &config.rate_limit {
        _ if kept.rate_limit => running.rate_limit.clone(),
        Some(rl) => Some(Arc::new(RateLimiter::new(rl)?)),
        None => None,
    };
    let shared = Shared {
        config: Arc::new(config),
        api_key,
        metrics: running.metrics.clone(),
        observer: running.observer.clone(),
        cache,
        rate_limit,
        // Counters of streams that outlive any one configuration.
        streams: running.streams.clone(),
    };
    Ok((shared, kept))
}

/// What asks for a reload: SIGHUP, caught from the moment this exists (the default action of
/// SIGHUP would end the process), and the file changing on disk.
pub struct Triggers {
    hangup: Signal,
}

impl Triggers {
    /// Installs the SIGHUP handler. Call before telling anyone the process is up.
    pub fn install() -> Result<Self, String> {
        let hangup =
            signal(SignalKind::hangup()).map_err(|e| format!("cannot catch SIGHUP: {e}"))?;
        Ok(Self { hangup })
    }

    /// Reloads on every SIGHUP and every change of the file's identity, until dropped.
    pub async fn follow<S>(mut self, mut reloader: Reloader<S>) {
        let mut seen = Stamp::of(&reloader.path).ok();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                got = self.hangup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    // Taken first, so a change SIGHUP already covers is not reloaded again.
                    seen = Stamp::of(&reloader.path).ok();
                    let _ = reloader.reload("sighup");
                }
                _ = tick.tick() => {
                    let now = Stamp::of(&reloader.path).ok();
                    // A missing file (mid-rotation) is waited out, not reported.
                    if now.is_some() && now != seen {
                        seen = now;
                        let _ = reloader.reload("file");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
