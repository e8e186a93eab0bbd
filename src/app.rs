//! Wires a validated [`Config`] into running listeners: the client listener with the full
//! stack, and the admin listener. Used by `serve`, `demo` and the end-to-end tests alike.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::error::BoxError;
use crate::server::{self, Acceptor, Bound, Health, MetricsRender};
use crate::stack::{self, Shared};
use crate::upstream::Upstream;

/// A gateway whose sockets are bound but which does not serve yet.
pub struct Gateway {
    shared: Shared,
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
        let shared = Shared::new(config)?;
        let health = Arc::new(Health::default());
        let metrics = Some(shared.metrics.render(
            health.clone(),
            shared.cache.clone(),
            shared.rate_limit.as_ref().map(|l| l.stats()),
        ));
        Ok(Self {
            shared,
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

    /// The rate limiter's counters (fallbacks included), if rate limiting is enabled.
    pub fn rate_limit_stats(&self) -> Option<Arc<crate::ratelimit::RateLimitStats>> {
        self.shared.rate_limit.as_ref().map(|l| l.stats())
    }

    /// The lookup cache, for its stats.
    pub fn cache(&self) -> Arc<crate::cache::LookupCache> {
        self.shared.cache.clone()
    }

    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Serves until `shutdown` resolves, then drains (see [`server`]) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let Gateway {
            shared,
            listener,
            acceptor,
            admin,
            health,
            metrics,
        } = self;
        let cfg = shared.config.clone();
        let service = stack::build(&shared, Upstream::new(&cfg.upstream));
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
            shared.metrics.refusals(),
            shutdown,
        )
        .await;
        let _ = admin_stop.send(());
        let _ = admin_task.await;
        tracing::info!("stopped");
    }
}
