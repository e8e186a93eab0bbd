//! The gateway binary as operators run it, for tests that need the real process: its stdout
//! read line by line, SIGTERM, its exit status.

#[path = "../../benches/support/rss.rs"]
mod rss;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::KEY;

/// The gateway binary, killed on drop if a test fails before it stops.
pub struct GatewayProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    /// Runs `amity-gateway serve` on `config` (TOML text) with the test key in `AMITY_API_KEY`
    /// and no other gateway variable from the test's environment.
    pub fn start(config: &str) -> (Self, tempfile::TempDir) {
        Self::start_in(config, Command::new(env!("CARGO_BIN_EXE_amity-gateway")))
    }

    /// [`GatewayProcess::start`] with at most `nofile` open file descriptors (`ulimit -n`).
    pub fn start_with_fd_limit(config: &str, nofile: u32) -> (Self, tempfile::TempDir) {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_amity-gateway"));
        Self::start_in(config, sh)
    }

    fn start_in(config: &str, mut command: Command) -> (Self, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("AMITY_API_KEY", KEY)
            .env_remove("RUST_LOG")
            .env_remove("GATEWAY_LISTEN")
            .env_remove("GATEWAY_ADMIN_LISTEN")
            .env_remove("GATEWAY_UPSTREAM_URL")
            .env_remove("GATEWAY_API_KEY_FILE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the gateway binary starts");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let gw = GatewayProcess {
            child,
            lines,
            stdout: Vec::new(),
            stderr: Some(stderr),
        };
        (gw, dir)
    }

    /// Reads stdout until a line satisfies `found` (bounded); returns that line.
    pub fn wait_for(&mut self, what: &str, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if found(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no {what} in the gateway's output:\n{:#?}", self.stdout),
            }
        }
    }

    /// The process id (to read its memory from /proc).
    /// Resident memory of the process now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// Samples the process's RSS every 20 ms until the sender is used or dropped; the task
    /// gives the highest reading.
    pub fn sample_rss(
        &self,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<u64>,
    ) {
        let pid = self.pid();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut max = 0;
            loop {
                max = max.max(rss_kib(pid));
                tokio::select! {
                    _ = &mut stopped => return max,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        });
        (stop, task)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns at once.
    pub fn term(&self) {
        self.signal("TERM");
    }

    /// Sends SIGHUP (reload the config) and returns at once.
    pub fn hup(&self) {
        self.signal("HUP");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} {pid}");
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The client and admin listeners' addresses, from the "gateway listening" line.
    pub fn addrs(&mut self) -> (SocketAddr, SocketAddr) {
        let line = self.wait_for("listening line", |l| l.contains("gateway listening"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let addr = |k: &str| v[k].as_str().unwrap().parse().unwrap();
        (addr("listen"), addr("admin"))
    }

    /// Every stdout line read so far.
    pub fn seen(&self) -> &[String] {
        &self.stdout
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns (stdout lines, stderr).
    pub fn terminate(self) -> (Vec<String>, String) {
        self.term();
        self.wait_exit()
    }

    /// Waits (bounded) for an exit with status 0; returns (stdout lines, stderr).
    pub fn wait_exit(mut self) -> (Vec<String>, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the gateway did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "exit status {status}");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stdout.push(line);
        }
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (std::mem::take(&mut self.stdout), stderr)
    }

    /// The client listener's address, from the "gateway listening" line.
    pub fn listen_addr(&mut self) -> SocketAddr {
        let line = self.wait_for("listening line", |l| l.contains("gateway listening"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["listen"].as_str().unwrap().parse().unwrap()
    }
}

fn rss_kib(pid: u32) -> u64 {
    rss::rss_kib(Some(pid)).expect("VmRSS in /proc/PID/status of a live process")
}
