//! A warm billed request costs exactly two script calls on Redis — reserve before, settle
//! after — and nothing else: no GET-then-SET, no WATCH/MULTI, no key lookups.
//!
//! Counted with `MONITOR` on a real `redis-server`. Commands a script runs appear tagged
//! `[<db> lua]` and are left out; everything the service sends is counted.
//!
//! Also counted there: what an idle replica's background work (the sweeper and the event
//! claims, found by due-index, never by a keyspace scan) sends per pass.

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
use support::rig::{wait_for, wait_for_async, DEADLINE};
use tower_credits::events::Dispatcher;
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
    // Redis Functions (`FCALL`) on Redis 7; `EVALSHA` below.
    let is_script = |n: &str| n == "FCALL" || n == "EVALSHA";
    let evalsha = names.iter().filter(|n| is_script(n)).count();
    let others: Vec<&String> = sent
        .iter()
        .zip(&names)
        .filter(|(_, n)| !is_script(n))
        .map(|(l, _)| l)
        .collect();
    println!(
        "{REQUESTS} requests: {evalsha} FCALL, {} other commands",
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

/// The time of a MONITOR line, in seconds (Redis's clock).
fn at(line: &str) -> f64 {
    line.split(' ')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0.0)
}

/// An idle replica (sweeper and event dispatcher running, nothing to do) sends a few
/// commands per pass, whatever the number of keys: counted with `MONITOR` over 40 passes of
/// each with 200,000 unrelated keys in the database. Before the due-indexes, every pass
/// walked the keyspace: here 100 `SCAN` calls or more per pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_sends_a_few_commands_per_pass_whatever_the_keyspace() {
    const KEYS: u64 = 200_000;
    const PASSES: usize = 40;
    let redis = RedisServer::start();
    redis.cli(&[
        "EVAL",
        "for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'other:' .. i, 'x') end return 1",
        "0",
        &KEYS.to_string(),
    ]);
    assert_eq!(redis.dbsize(), KEYS);
    let ledger = RedisLedger::builder()
        .url(redis.url())
        .call_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();

    let monitor = Monitor::start(redis.port());
    monitor.sync(&redis, "idle-start");
    let sweeper = ledger.spawn_sweeper(Duration::from_millis(10));
    let events = Dispatcher::new(ledger.clone())
        .on_event(|_| async { Ok(()) })
        .scan_every(Duration::from_millis(10))
        .spawn();
    let passes = |index: &str| {
        let lines = monitor.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| !l.contains(" lua] ") && l.contains(index) && l.contains("\"take\""))
            .count()
    };
    wait_for_async("40 passes of each due-index", DEADLINE, || async {
        (passes("{!due}:holds") >= PASSES && passes("{!due}:events") >= PASSES).then_some(())
    })
    .await;
    sweeper.abort();
    drop(events);
    monitor.sync(&redis, "idle-end");

    let sent = monitor.between("idle-start", "idle-end");
    let names: Vec<String> = sent.iter().map(|l| command(l)).collect();
    let takes = sent.iter().filter(|l| l.contains("\"take\"")).count();
    let dones = sent.iter().filter(|l| l.contains("\"done\"")).count();
    let scans = names.iter().filter(|n| *n == "SCAN").count();
    let others: Vec<&String> = sent
        .iter()
        .zip(&names)
        .filter(|(l, n)| {
            !(l.contains("{!due}") || *n == "SCAN" || (*n == "SCRIPT" && l.contains("load")))
        })
        .map(|(l, _)| l)
        .collect();
    let span = at(sent.last().unwrap()) - at(sent.first().unwrap());
    println!(
        "{} commands over {takes} passes ({span:.2} s of Redis time, {KEYS} keys): {dones} \
         ends of a pass, {scans} repair SCAN steps, others {others:?}",
        sent.len()
    );
    assert!(
        others.is_empty(),
        "commands besides the passes: {others:#?}"
    );
    assert!(takes >= 2 * PASSES);
    // A pass that finds nothing due and no repair step due is one command; a repair step
    // adds a SCAN and the end of the pass.
    assert!(dones <= scans + 2, "{dones} ends for {scans} repair steps");
    // The repair pass is rate-limited over Redis's own clock: at most one step per index
    // per REPAIR_GAP (plus the first, due at once).
    let gap = tower_credits::ledger::redis::REPAIR_GAP.as_secs_f64();
    let most_steps = 2 * (1 + (span / gap).ceil() as usize);
    assert!(scans <= most_steps, "{scans} SCAN steps in {span:.2} s");
    let script_loads = names.iter().filter(|n| *n == "SCRIPT").count();
    assert!(
        sent.len() <= takes + dones + scans + script_loads,
        "{} commands",
        sent.len()
    );
}

/// The figure, measured (not a test: run alone, by hand):
/// `cargo test --all-features --test redis_round_trips -- --ignored --nocapture`.
/// An idle replica (a sweeper every second, an event dispatcher at its default 5 s) on a
/// Redis holding 1,000,000 unrelated keys, for 20 s: the commands it sent (`MONITOR`,
/// commands run inside scripts left out) and what Redis spent on them
/// (`INFO commandstats`, reset at the start). The target is at most 200 commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 20 s measurement: run alone, see the doc comment"]
async fn idle_replica_commands_in_20_s_with_a_million_keys() {
    const KEYS: u64 = 1_000_000;
    let redis = RedisServer::start();
    redis.cli(&[
        "EVAL",
        "for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'other:' .. i, 'x') end return 1",
        "0",
        &KEYS.to_string(),
    ]);
    assert_eq!(redis.dbsize(), KEYS);
    let ledger = RedisLedger::builder()
        .url(redis.url())
        .build()
        .await
        .unwrap();
    let monitor = Monitor::start(redis.port());
    monitor.sync(&redis, "million-start");
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let sweeper = ledger.spawn_sweeper(Duration::from_secs(1));
    let events = Dispatcher::new(ledger.clone())
        .on_event(|_| async { Ok(()) })
        .spawn();
    tokio::time::sleep(Duration::from_secs(20)).await;
    sweeper.abort();
    drop(events);
    let stats = redis.cli(&["INFO", "commandstats"]);
    monitor.sync(&redis, "million-end");
    let sent = monitor.between("million-start", "million-end");
    let mut by_name = std::collections::BTreeMap::<String, usize>::new();
    for line in &sent {
        *by_name.entry(command(line)).or_default() += 1;
    }
    // The RESETSTAT and INFO of this measurement are not the replica's.
    by_name.remove("CONFIG");
    by_name.remove("INFO");
    let total: usize = by_name.values().sum();
    for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
        println!("{line}");
    }
    println!("an idle replica, {KEYS} unrelated keys, 20 s: {total} commands sent {by_name:?}");
    assert!(total <= 200, "{total} commands in 20 s");
}
