//! One Redis deployment behind one handle: a single server, a Cluster (by its seed nodes) or a
//! Sentinel-managed primary, named by one URL so that one secret (`GATEWAY_REDIS_URL`) says
//! both where Redis is and how it is run.
//!
//! - `redis://[user:password@]host:port[/db]`: one server ([`ConnectionManager`], which
//!   reconnects by itself).
//! - `redis+cluster://[user:password@]host:port,host:port,…`: a Cluster's seed nodes. The
//!   cluster client learns the slot map from them, follows `MOVED`/`ASK` and refreshes the map
//!   when a node fails or a replica is promoted.
//! - `redis+sentinel://[user:password@]host:port,host:port,…/master-name[/db]`: the sentinels
//!   (port 26379 when omitted) and the master's name; the user and password are the data
//!   nodes', the sentinels are asked without. The primary is looked up through the sentinels
//!   and looked up again whenever a call fails in a way that says it may have changed (the
//!   connection dropped, `READONLY` from a demoted primary), so a promotion is followed
//!   without a restart.
//!
//! The link connects in the background, retrying until Redis answers: a Redis that is down at
//! start-up delays nothing, callers see [`RedisLink::conn`] return `None` and decide without it.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError};
use redis::{RedisFuture, Value};

/// Where Redis is and how it is run, parsed from one URL (see the module doc). `Debug` shows
/// the shape only: the URL may carry a password.
#[derive(Clone)]
pub enum RedisTarget {
    Single(String),
    /// Seed nodes, each a `redis://` URL carrying the credentials.
    Cluster(Vec<String>),
    Sentinel {
        /// `redis://host:port/` of each sentinel.
        sentinels: Vec<String>,
        master: String,
        /// Database, user and password used on the primary.
        node: redis::RedisConnectionInfo,
    },
}

/// Compared on a configuration reload (a changed target is a new link).
impl PartialEq for RedisTarget {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (RedisTarget::Single(a), RedisTarget::Single(b)) => a == b,
            (RedisTarget::Cluster(a), RedisTarget::Cluster(b)) => a == b,
            (
                RedisTarget::Sentinel {
                    sentinels,
                    master,
                    node,
                },
                RedisTarget::Sentinel {
                    sentinels: s2,
                    master: m2,
                    node: n2,
                },
            ) => {
                sentinels == s2
                    && master == m2
                    && (node.db, &node.username, &node.password, node.protocol)
                        == (n2.db, &n2.username, &n2.password, n2.protocol)
            }
            _ => false,
        }
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTarget::Single(_) => f.write_str("Single(****)"),
            RedisTarget::Cluster(seeds) => write!(f, "Cluster({} seeds)", seeds.len()),
            RedisTarget::Sentinel { sentinels, .. } => {
                write!(f, "Sentinel({} sentinels)", sentinels.len())
            }
        }
    }
}

impl RedisTarget {
    /// Parses and checks a URL without connecting. Errors never quote the URL (it may hold a
    /// password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let not_url = |e: RedisError| format!("not a Redis URL ({:?})", e.kind());
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let (userinfo, hosts, path) = split_authority(rest)?;
            if !path.trim_matches('/').is_empty() {
                return Err("redis+cluster:// takes no path (a Cluster has one database)".into());
            }
            let seeds = hosts
                .iter()
                .map(|h| format!("redis://{userinfo}{}/", with_port(h, 6379)))
                .collect::<Vec<_>>();
            ClusterClient::new(seeds.clone()).map_err(not_url)?;
            return Ok(RedisTarget::Cluster(seeds));
        }
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (userinfo, hosts, path) = split_authority(rest)?;
            let mut parts = path.trim_matches('/').split('/');
            let master = parts.next().unwrap_or("").to_owned();
            if master.is_empty() {
                return Err("redis+sentinel:// needs the master's name as its path".into());
            }
            let db = parts.next().unwrap_or("0");
            if parts.next().is_some() {
                return Err("redis+sentinel:// path is /master-name[/db]".into());
            }
            let node = format!("redis://{userinfo}sentinel-node/{db}")
                .into_connection_info()
                .map_err(not_url)?
                .redis;
            let sentinels = hosts
                .iter()
                .map(|h| format!("redis://{}/", with_port(h, 26379)))
                .collect::<Vec<_>>();
            let target = RedisTarget::Sentinel {
                sentinels,
                master,
                node,
            };
            target.sentinel_client().map_err(not_url)?;
            return Ok(target);
        }
        redis::Client::open(url).map_err(not_url)?;
        Ok(RedisTarget::Single(url.to_owned()))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster(_))
    }

    fn sentinel_client(&self) -> Result<SentinelClient, RedisError> {
        let RedisTarget::Sentinel {
            sentinels,
            master,
            node,
        } = self
        else {
            return Err(RedisError::from((ErrorKind::ClientError, "not a sentinel")));
        };
        SentinelClient::build(
            sentinels.clone(),
            master.clone(),
            Some(SentinelNodeConnectionInfo {
                tls_mode: None,
                redis_connection_info: Some(node.clone()),
            }),
            SentinelServerType::Master,
        )
    }

    /// One attempt to connect, bounded by [`CONNECT_BUDGET`].
    async fn connect(&self) -> Result<Conn, RedisError> {
        let attempt = async {
            match self {
                RedisTarget::Single(url) => {
                    let client = redis::Client::open(url.as_str())?;
                    let config = ConnectionManagerConfig::new()
                        .set_number_of_retries(1)
                        .set_max_delay(1_000)
                        .set_connection_timeout(Duration::from_secs(1))
                        .set_response_timeout(Duration::from_secs(1));
                    Ok(Conn::Single(
                        ConnectionManager::new_with_config(client, config).await?,
                    ))
                }
                RedisTarget::Cluster(seeds) => {
                    let client = ClusterClient::builder(seeds.clone())
                        .connection_timeout(Duration::from_secs(1))
                        .response_timeout(Duration::from_secs(1))
                        .retries(3)
                        .max_retry_wait(500)
                        .build()?;
                    Ok(Conn::Cluster(client.get_async_connection().await?))
                }
                RedisTarget::Sentinel { .. } => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Duration::from_secs(1))
                        .set_response_timeout(Duration::from_secs(1));
                    let conn = self
                        .sentinel_client()?
                        .get_async_connection_with_config(&config)
                        .await?;
                    Ok(Conn::Sentinel(conn))
                }
            }
        };
        tokio::time::timeout(CONNECT_BUDGET, attempt)
            .await
            .map_err(|_| RedisError::from((ErrorKind::IoError, "connect timed out")))?
    }
}

/// How long calls behind Sentinel may all miss their budget before the primary is looked up
/// again.
const SILENT_PRIMARY: Duration = Duration::from_secs(1);

/// Longest one connection attempt (a sentinel lookup included) may take.
const CONNECT_BUDGET: Duration = Duration::from_secs(3);

/// `user:password@` (kept verbatim for the node URLs), the hosts, and the path after them.
fn split_authority(rest: &str) -> Result<(&str, Vec<&str>, &str), String> {
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => authority.split_at(i + 1),
        None => ("", authority),
    };
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err("every host in the list needs a name".into());
    }
    Ok((userinfo, hosts, path))
}

fn with_port(host: &str, port: u16) -> String {
    // `[::1]` or `name` lack a port; `[::1]:7000` and `name:7000` have one.
    let has_port = match host.rfind(']') {
        Some(end) => host[end..].contains(':'),
        None => host.contains(':'),
    };
    if has_port {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    }
}

/// A live connection of whichever kind; cheap to clone (each is multiplexed).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(MultiplexedConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

/// The current connection to a [`RedisTarget`], (re)made in the background.
pub struct RedisLink {
    target: RedisTarget,
    /// What the logs call this link ("rate limit backend", …).
    what: &'static str,
    conn: RwLock<Option<Conn>>,
    /// A connecting task is running (at most one).
    connecting: AtomicBool,
    /// When a call last succeeded (ms since `born`), to tell a slow call from a lost primary.
    last_ok_ms: AtomicU64,
    born: Instant,
    me: Weak<RedisLink>,
}

impl RedisLink {
    /// Starts connecting at once when a Tokio runtime is running (else on first use).
    pub fn new(target: RedisTarget, what: &'static str) -> Arc<Self> {
        let link = Arc::new_cyclic(|me| Self {
            target,
            what,
            conn: RwLock::new(None),
            connecting: AtomicBool::new(false),
            last_ok_ms: AtomicU64::new(0),
            born: Instant::now(),
            me: me.clone(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            link.reconnect();
        }
        link
    }

    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// The connection, or `None` (and a connecting task started) while there is none.
    pub fn conn(&self) -> Option<Conn> {
        let conn = self.conn.read().ok().and_then(|c| c.clone());
        if conn.is_none() {
            self.reconnect();
        }
        conn
    }

    /// Tells the link a call failed. Behind Sentinel an error that may mean the primary moved
    /// starts a new lookup; the old connection serves until the new one is made. The other
    /// kinds follow their deployment by themselves.
    pub fn failed(&self, err: &RedisError) {
        let moved = err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_unrecoverable_error()
            || err.kind() == ErrorKind::ReadOnly;
        if moved && matches!(self.target, RedisTarget::Sentinel { .. }) {
            self.reconnect();
        }
    }

    /// Tells the link a call succeeded.
    pub fn succeeded(&self) {
        self.last_ok_ms.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// Tells the link a call missed its time budget. Behind Sentinel, calls that have all
    /// been missing it for [`SILENT_PRIMARY`] start a new lookup: a primary cut off by the
    /// network answers nothing at all, so no error would ever say it moved.
    pub fn timed_out(&self) {
        let silent = self
            .elapsed_ms()
            .saturating_sub(self.last_ok_ms.load(Ordering::Relaxed));
        if silent > SILENT_PRIMARY.as_millis() as u64
            && matches!(self.target, RedisTarget::Sentinel { .. })
        {
            self.reconnect();
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts the one task that connects, retrying (100 ms doubling to 2 s) until Redis
    /// answers or the link is dropped.
    fn reconnect(&self) {
        if tokio::runtime::Handle::try_current().is_err()
            || self.connecting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let me = self.me.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            let mut warned = false;
            loop {
                let Some(link) = me.upgrade() else { return };
                match link.target.connect().await {
                    Ok(conn) => {
                        if let Ok(mut slot) = link.conn.write() {
                            *slot = Some(conn);
                        }
                        link.succeeded();
                        link.connecting.store(false, Ordering::Release);
                        tracing::info!(what = link.what, "redis connected");
                        return;
                    }
                    Err(e) if !warned => {
                        tracing::warn!(what = link.what, kind = ?e.kind(), "redis unreachable; retrying in the background");
                        warned = true;
                    }
                    Err(_) => {}
                }
                drop(link);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seeds_with_the_credentials() {
        let t =
            RedisTarget::parse("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2,[::1]:7002").unwrap();
        let RedisTarget::Cluster(seeds) = &t else {
            panic!("{t:?}")
        };
        assert_eq!(
            seeds,
            &[
                "redis://:pw@10.0.0.1:7000/",
                "redis://:pw@10.0.0.2:6379/",
                "redis://:pw@[::1]:7002/"
            ]
        );
        assert!(!format!("{t:?}").contains("pw"));
    }

    #[test]
    fn sentinel_urls_name_the_master_and_keep_credentials_for_the_data_nodes() {
        let t = RedisTarget::parse("redis+sentinel://u:p%40ss@s1:5000,s2/mymaster/3").unwrap();
        let RedisTarget::Sentinel {
            sentinels,
            master,
            node,
        } = &t
        else {
            panic!("{t:?}")
        };
        assert_eq!(sentinels, &["redis://s1:5000/", "redis://s2:26379/"]);
        assert_eq!(master, "mymaster");
        assert_eq!(node.db, 3);
        assert_eq!(node.username.as_deref(), Some("u"));
        assert_eq!(node.password.as_deref(), Some("p@ss"));
        assert!(!format!("{t:?}").contains("ss"));
    }

    #[test]
    fn bad_urls_are_refused_without_quoting_them() {
        for url in [
            "redis+sentinel://:secret@s1:26379",
            "redis+sentinel://:secret@s1/m/x",
            "redis+sentinel://:secret@s1/m/1/2",
            "redis+cluster://:secret@a,,b",
            "redis+cluster://:secret@a/1",
            "http://:secret@x",
        ] {
            let err = RedisTarget::parse(url).unwrap_err();
            assert!(!err.contains("secret"), "{url}: {err}");
        }
        assert!(matches!(
            RedisTarget::parse("redis://127.0.0.1:6379/2"),
            Ok(RedisTarget::Single(_))
        ));
    }
}
