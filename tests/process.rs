//! The real binary as operators run it: graceful shutdown on SIGTERM, `check-config`, the demo
//! as printed, and the logs of a whole run free of secrets.

mod common;

use common::process::GatewayProcess;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};

const BIN: &str = env!("CARGO_BIN_EXE_amity-gateway");

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A gateway process on ephemeral loopback ports, upstream `sim`, JSON logs at `log`.
fn spawn_gateway(sim: SocketAddr, log: &str) -> (GatewayProcess, SocketAddr, tempfile::TempDir) {
    let (mut gw, dir) = GatewayProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndrain_timeout_secs = 10\n\
         [upstream]\nurl = \"http://{sim}\"\ntimeout_ms = 5000\n[log]\nformat = \"json\"\nlevel = \"{log}\"\n"
    ));
    let addr = gw.listen_addr();
    (gw, addr, dir)
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_refuses_new_connections_and_exits_zero() {
    let (sim, sim_handle) = start_sim().await;
    let (gw, addr, _dir) = spawn_gateway(sim_handle.addr, "info");
    sim.set_latency(Duration::from_millis(2_000));
    let url = format!("http://{addr}/api/v3/sessions");
    let slow = tokio::spawn(async move { post_json(&url, VALID).await });
    // Wait until the slow request has reached the upstream, then ask the gateway to stop.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "request never reached the simulator"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.term();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "listener still accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !slow.is_finished(),
        "the in-flight request was still running when new connections were refused"
    );
    let res = slow.await.unwrap();
    assert_eq!(res.status, StatusCode::OK, "in-flight request completed");
    assert!(res.json()["accessToken"].is_string());
    gw.wait_exit(); // asserts exit status 0
    sim_handle.stop().await;
}

#[tokio::test]
async fn logs_of_a_whole_run_at_trace_level_hold_no_secret() {
    let (_sim, sim_handle) = start_sim().await;
    let (gw, addr, _dir) = spawn_gateway(sim_handle.addr, "trace");
    let base = format!("http://{addr}");
    let auth_token = "auth-token-value-9d1e";
    let client_key = "client-sent-key-51ab";
    let mut secrets = vec![KEY.to_owned(), auth_token.to_owned(), client_key.to_owned()];
    for (i, version) in ["v3", "v4", "v5"].iter().enumerate() {
        let body = format!(
            r#"{{"userId":"log-user-{i}","deviceId":"log-dev-{i}","authToken":"{auth_token}"}}"#
        );
        let res = request(
            Method::POST,
            &format!("{base}/api/{version}/sessions"),
            &[
                ("content-type", "application/json"),
                ("x-api-key", client_key),
            ],
            body,
        )
        .await;
        assert_eq!(res.status, StatusCode::OK);
        let json = res.json();
        let access = json["accessToken"].as_str().unwrap().to_owned();
        if let Some(r) = json["refreshToken"].as_str() {
            secrets.push(r.to_owned());
        }
        // Use the token on a lookup route, where it travels as a bearer header.
        let bearer = format!("Bearer {access}");
        let res = request(
            Method::GET,
            &format!("{base}/api/v3/users/log-user-{i}"),
            &[("authorization", &bearer)],
            "",
        )
        .await;
        assert_eq!(res.status, StatusCode::OK);
        secrets.push(access);
    }
    // A rejected body that carries a secret must not echo it either.
    let res = post_json(
        &format!("{base}/api/v3/sessions"),
        format!(r#"{{"userId":"","authToken":"{auth_token}"}}"#),
    )
    .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!String::from_utf8_lossy(&res.body).contains(auth_token));
    let (stdout, stderr) = gw.terminate();
    let logs = stdout.join("\n") + &stderr;
    assert!(
        logs.lines()
            .filter(|l| l.contains("\"target\":\"access\""))
            .count()
            >= 7,
        "access log present:\n{logs}"
    );
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "a secret leaked into the logs");
    }
    sim_handle.stop().await;
}

#[test]
fn check_config_rejects_a_misspelt_key_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[upstream]\nurl = \"https://apix.eu.amity.co\"\ntimeout_msec = 5\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env("AMITY_API_KEY", "k")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timeout_msec"), "{err}");
}

#[test]
fn check_config_accepts_the_shipped_config_and_masks_the_key() {
    let out = Command::new(BIN)
        .args([
            "check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"),
        ])
        .env("AMITY_API_KEY", "shipped-secret-key")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("[upstream]"));
    assert!(printed.contains("****"));
    assert!(!printed.contains("shipped-secret-key"));
}

#[test]
fn demo_prints_curl_commands_that_work_as_printed() {
    assert!(
        Command::new("curl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "curl not found: apt-get install -y curl"
    );
    let (gw, admin, sim) = (free_addr(), free_addr(), free_addr());
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            &gw.to_string(),
            "--admin-listen",
            &admin.to_string(),
            "--sim-listen",
            &sim.to_string(),
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut commands = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("curl ") {
            commands.push(line.clone());
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    let run = |cmd: &str| {
        let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(commands.len(), 4, "{commands:?}");
    let valid: serde_json::Value = serde_json::from_str(&run(&commands[0])).unwrap();
    assert!(valid["accessToken"].is_string(), "{valid}");
    let invalid: serde_json::Value = serde_json::from_str(&run(&commands[1])).unwrap();
    assert_eq!(invalid["code"], 500000, "{invalid}");
    assert!(invalid["data"]["detail"].as_array().unwrap().len() >= 3);
    let seen: serde_json::Value = serde_json::from_str(&run(&commands[2])).unwrap();
    assert_eq!(
        seen.as_array().unwrap().len(),
        1,
        "only the valid request reached the simulator"
    );
    assert!(run(&commands[3]).starts_with("ready"));
    let _ = child.kill();
    let _ = child.wait();
}
