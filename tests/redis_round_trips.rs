//! A warm billed request costs exactly two script calls on Redis — reserve before, settle
//! after — and nothing else: no GET-then-SET, no WATCH/MULTI, no key lookups.
//!
//! Counted with `MONITOR` on a real `redis-server`. Commands a script runs appear tagged
//! `[<db> lua]` and are left out; everything the service sends is counted.

mod http_support;
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use http_support::{account, get_req, http1, send, Server};
use support::redis::RedisServer;
use support::rig::{wait_for, DEADLINE};
use tower_credits::pricing::Pricing;
use tower_credits::LedgerReports;
use tower_credits::{CreditLayer, RedisLedger};

const REQUESTS: usize = 25;

/// Runs `redis-cli monitor` and collects its lines.
struct Monitor {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    fn start(port: u16) -> Self {
        let mut child = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "monitor"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli (install redis-tools: scripts/test does it)");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    /// Waits until `marker` (sent with `ECHO`) shows up, so every earlier command is in.
    fn sync(&self, server: &RedisServer, marker: &str) {
        wait_for("MONITOR to see the marker", DEADLINE, || {
            server.cli(&["ECHO", marker]);
            let lines = self.lines.lock().unwrap();
            lines.iter().any(|l| l.contains(marker)).then_some(())
        });
    }

    fn between(&self, start: &str, end: &str) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        let from = lines.iter().rposition(|l| l.contains(start)).unwrap();
        let to = lines.iter().position(|l| l.contains(end)).unwrap();
        lines[from + 1..to]
            .iter()
            .filter(|l| !l.contains(" lua] ") && !l.contains(start) && !l.contains(end))
            .cloned()
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command name of a MONITOR line: `1700000000.1 [0 127.0.0.1:5555] "EVALSHA" "…" …`.
fn command(line: &str) -> String {
    line.split("] ")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .unwrap_or("?")
        .to_ascii_uppercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_billed_request_is_exactly_two_script_calls() {
    let redis = RedisServer::start();
    let ledger = RedisLedger::builder()
        .url(redis.url())
        .call_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let acct = account(&ledger, "acct_rt", "key-rt", 1_000).await;
    let layer = CreditLayer::new(ledger.clone()).pricing(Pricing::new().route("GET /v1/echo", 1));
    let pending = layer.pending_settlements();
    let server = Server::start(
        Router::new()
            .route("/v1/echo", get(|| async { "echo" }))
            .layer(layer),
    )
    .await;
    let client = http1();
    let url = server.url("/v1/echo");

    // Warm up: the API key lookup is cached and the scripts are loaded.
    let first = send(&client, get_req(&url, Some("key-rt"))).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(pending.drain(Duration::from_secs(10)).await);

    let monitor = Monitor::start(redis.port());
    monitor.sync(&redis, "round-trips-start");
    for _ in 0..REQUESTS {
        let answer = send(&client, get_req(&url, Some("key-rt"))).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert!(pending.drain(Duration::from_secs(10)).await);
    monitor.sync(&redis, "round-trips-end");

    let sent = monitor.between("round-trips-start", "round-trips-end");
    let names: Vec<String> = sent.iter().map(|l| command(l)).collect();
    let evalsha = names.iter().filter(|n| *n == "EVALSHA").count();
    let others: Vec<&String> = sent
        .iter()
        .zip(&names)
        .filter(|(_, n)| *n != "EVALSHA")
        .map(|(l, _)| l)
        .collect();
    println!(
        "{REQUESTS} requests: {evalsha} EVALSHA, {} other commands",
        others.len()
    );
    assert!(
        others.is_empty(),
        "commands besides the scripts: {others:#?}"
    );
    assert_eq!(evalsha, 2 * REQUESTS, "reserve + settle per request");

    let b = ledger.balance(&acct).await.unwrap();
    assert_eq!(
        (b.available, b.held, b.committed),
        (1_000 - 1 - REQUESTS as i64, 0, 1 + REQUESTS as u64)
    );
}
