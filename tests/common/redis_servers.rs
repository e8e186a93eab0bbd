//! Real Redis deployments on loopback for the tests: one server, a 3-primary Cluster, and a
//! primary + replica watched by three sentinels. Every process is a child of the test, killed
//! on drop; every wait is bounded and fails saying what it waited for.
//!
//! Needs `redis-server` and `redis-cli` on PATH (Debian: `apt-get install -y redis-server
//! redis-tools`); without them these tests fail and say so.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port nothing listens on (yet).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A `redis-server` child process (a data node or a sentinel), killed on drop. It runs in a
/// directory of its own, removed on drop: whatever it writes (a replica's copy of its
/// primary's data, a Cluster node's `nodes.conf`) never lands in the working directory.
pub struct RedisServer {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A plain server, nothing saved to disk.
    pub fn new(port: u16) -> Self {
        Self::with_args(port, Vec::new())
    }

    /// A server started with `args` before the common ones (port, loopback, no persistence,
    /// its own directory).
    pub fn with_args(port: u16, args: Vec<String>) -> Self {
        Self {
            port,
            args,
            child: None,
            dir: tempfile::tempdir().expect("a temporary directory for redis-server"),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts) the server on its port and waits until it answers PING.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(&self.args)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server not found ({e}): apt-get install -y redis-server")
            });
        self.child = Some(child);
        for _ in 0..200 {
            if self.pings().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    pub async fn pings(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").await.is_ok()
            && s.read_exact(&mut buf).await.is_ok()
            && &buf == b"+PONG\r\n"
    }

    /// Kills the server (as a crash would) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP): its connections stay open and nothing answers, as with a
    /// host cut off by the network. Killed as usual on drop.
    pub fn freeze(&self) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sent = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
        assert!(sent.success(), "kill -STOP {pid}");
    }

    /// One command's reply, on a fresh connection.
    pub async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await
    }

    /// Polls `check` (every 100 ms, for at most 30 s) until it holds.
    pub async fn wait_until(&self, what: &str, check: impl Fn(&str) -> bool, args: &[&str]) {
        for _ in 0..300 {
            if let Ok(reply) = self.query::<redis::Value>(args).await {
                if check(&text(&reply)) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("port {}: {what} not reached in 30 s", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A reply flattened to text, for loose checks on INFO-like answers.
pub fn text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(i) => i.to_string(),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().map(text).collect::<Vec<_>>().join("\n")
        }
        redis::Value::Map(kv) => kv
            .iter()
            .map(|(k, v)| format!("{}\n{}", text(k), text(v)))
            .collect::<Vec<_>>()
            .join("\n"),
        other => format!("{other:?}"),
    }
}

/// Three primaries, no replicas, slots split by `redis-cli --cluster create` (the first node
/// holds slots 0-5460). Each node keeps its `nodes.conf` in its own directory, so a killed
/// node restarted on its port rejoins with its slots.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "1000",
                "--cluster-port",
                &free_port().to_string(),
            ];
            let mut node =
                RedisServer::with_args(free_port(), args.iter().map(|s| s.to_string()).collect());
            node.start().await;
            nodes.push(node);
        }
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| n.addr()))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("redis-cli not found ({e}): apt-get install -y redis-tools")
            });
        assert!(status.success(), "redis-cli --cluster create");
        let cluster = Self { nodes };
        cluster.wait_ok().await;
        cluster
    }

    /// `redis+cluster://` naming every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(|n| n.addr()).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Waits until every running node says the cluster is ok.
    pub async fn wait_ok(&self) {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            node.wait_until(
                "cluster_state:ok",
                |t| t.contains("cluster_state:ok"),
                &["CLUSTER", "INFO"],
            )
            .await;
        }
    }

    /// The slot of `key`, as the cluster computes it (asked of a running node).
    pub async fn slot(&self, key: &str) -> i64 {
        let node = self.nodes.iter().find(|n| n.child.is_some()).unwrap();
        node.query(&["CLUSTER", "KEYSLOT", key]).await.unwrap()
    }
}

/// One primary, one replica, three sentinels (quorum 2) watching them as `mymaster`, with
/// short timeouts so a failover takes seconds.
pub struct RedisSentinels {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisSentinels {
    pub async fn start() -> Self {
        let mut primary = RedisServer::new(free_port());
        primary.start().await;
        let mut replica = RedisServer::with_args(
            free_port(),
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port.to_string(),
            ],
        );
        replica.start().await;
        replica
            .wait_until(
                "replication link up",
                |t| t.contains("master_link_status:up"),
                &["INFO", "replication"],
            )
            .await;
        let dir = tempfile::tempdir().unwrap();
        let mut sentinels = Vec::new();
        for i in 0..3 {
            // Sentinel rewrites its config file, so each gets its own, writable.
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor mymaster 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 5000\n",
                    primary.port
                ),
            )
            .unwrap();
            let mut s = RedisServer::with_args(
                free_port(),
                vec![conf.to_str().unwrap().into(), "--sentinel".into()],
            );
            s.start().await;
            sentinels.push(s);
        }
        let this = Self {
            primary,
            replica,
            sentinels,
            _dir: dir,
        };
        // A failover needs the replica known and a majority of sentinels aware of each other.
        let replica_port = this.replica.port.to_string();
        for s in &this.sentinels {
            s.wait_until(
                "the replica known",
                |t| t.contains(&replica_port),
                &["SENTINEL", "REPLICAS", "mymaster"],
            )
            .await;
            s.wait_until(
                "the other sentinels known",
                |t| t.matches("127.0.0.1").count() >= 2,
                &["SENTINEL", "SENTINELS", "mymaster"],
            )
            .await;
        }
        this
    }

    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| s.addr()).collect();
        format!("redis+sentinel://{}/mymaster", hosts.join(","))
    }

    /// Waits until every sentinel names `port` as the primary.
    pub async fn wait_primary(&self, port: u16) {
        let port = port.to_string();
        for s in &self.sentinels {
            s.wait_until(
                "the new primary named",
                |t| t.lines().nth(1) == Some(port.as_str()),
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"],
            )
            .await;
        }
    }
}
