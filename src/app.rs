//! Wires a validated [`Config`] into running listeners: the client listener with the full
//! stack, and the admin listener. Used by `serve`, `demo` and the end-to-end tests alike.
//! `serve` also follows its config file (see [`crate::live`]).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::error::BoxError;
use crate::live::{Live, Reloader, Triggers};
use crate::server::{self, Acceptor, Bound, Health, MetricsRender};
use crate::stack::{self, Shared};
use crate::upstream::Upstream;

/// A gateway whose sockets are bound but which does not serve yet.
pub struct Gateway {
    /// The parts in use; a reload replaces them (see [`crate::live`]).
    shared: Arc<ArcSwap<Shared>>,
    /// The config file to follow, and SIGHUP, caught from [`Gateway::follow_config`] on.
    follow: Option<(PathBuf, Triggers)>,
    listener: TcpListener,
    acceptor: Acceptor,
    admin: TcpListener,
    health: Arc<Health>,
    metrics: Option<MetricsRender>,
}

impl Gateway {
    /// Loads the key and the TLS pair, binds both listeners. Fails fast on anything wrong.
    pub async fn bind(config: Config) -> Result<Self, BoxError> {
        let acceptor = match &config.tls {
            Some(tls) => Acceptor::Tls {
                acceptor: crate::tls::acceptor(tls)?,
                handshake_timeout: tls.handshake_timeout,
            },
            None => Acceptor::Plain,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.admin_listen))?;
        let first = Shared::new(config)?;
        first.metrics.config_in_use(&first.config.hash);
        let shared = Arc::new(ArcSwap::from_pointee(first));
        let health = Arc::new(Health::default());
        let current = shared.clone();
        let streams = shared.load().streams.clone();
        let metrics = Some(shared.load().metrics.render(
            health.clone(),
            move || {
                let s = current.load();
                (s.cache.clone(), s.rate_limit.as_ref().map(|l| l.stats()))
            },
            streams,
        ));
        Ok(Self {
            shared,
            follow: None,
            listener,
            acceptor,
            admin,
            health,
            metrics,
        })
    }

    pub fn bound(&self) -> Bound {
        let addr = |l: &TcpListener| l.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        Bound {
            addr: addr(&self.listener),
            admin_addr: addr(&self.admin),
        }
    }

    /// Reloads the config from `path` on SIGHUP and when the file changes on disk, once
    /// running. SIGHUP is caught from now on.
    pub fn follow_config(&mut self, path: PathBuf) -> Result<(), String> {
        self.follow = Some((path, Triggers::install()?));
        Ok(())
    }

    /// The rate limiter's counters (fallbacks included), if rate limiting is enabled.
    pub fn rate_limit_stats(&self) -> Option<Arc<crate::ratelimit::RateLimitStats>> {
        self.shared.load().rate_limit.as_ref().map(|l| l.stats())
    }

    /// The lookup cache, for its stats.
    pub fn cache(&self) -> Arc<crate::cache::LookupCache> {
        self.shared.load().cache.clone()
    }

    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Serves until `shutdown` resolves, then drains (see [`server`]) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let Gateway {
            shared,
            follow,
            listener,
            acceptor,
            admin,
            health,
            metrics,
        } = self;
        let first = shared.load_full();
        let cfg = first.config.clone();
        // The whole client-facing service for a set of parts. The upstream client (its
        // connection pool) is kept across reloads that leave `[upstream]` as it is.
        let mut upstream = (cfg.upstream.clone(), Upstream::new(&cfg.upstream));
        let mut build = move |s: &Shared| {
            if s.config.upstream != upstream.0 {
                upstream = (s.config.upstream.clone(), Upstream::new(&s.config.upstream));
            }
            stack::build(s, upstream.1.clone())
        };
        let (service, follower) = match follow {
            Some((path, triggers)) => {
                let reloader = Reloader::new(path, shared, Box::new(build));
                let live = reloader.live();
                (live, Some(tokio::spawn(triggers.follow(reloader))))
            }
            None => (
                Live::new(Arc::new(ArcSwap::from_pointee(build(&first)))),
                None,
            ),
        };
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = tokio::spawn(server::serve_admin(admin, health.clone(), metrics, async {
            let _ = admin_stopped.await;
        }));
        let draining = health.clone();
        let shutdown = async move {
            shutdown.await;
            tracing::info!("shutdown requested; draining");
            draining.start_draining();
        };
        server::serve(
            listener,
            acceptor,
            service,
            cfg.connections.clone(),
            first.metrics.refusals(),
            shutdown,
        )
        .await;
        if let Some(f) = follower {
            f.abort();
        }
        let _ = admin_stop.send(());
        let _ = admin_task.await;
        tracing::info!("stopped");
    }
}
