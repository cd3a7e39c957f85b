//! The quickstart over real HTTP, as a user runs it: issue items 2, 3 and 4.
//!
//! The system under test is `target/release/examples/quickstart` (built here with
//! `cargo build --release --example quickstart` when it is missing), started as its own
//! process on a free port with `DEMO_RICH_CREDITS` large enough that `demo-rich` never runs
//! out (a drained account would measure 402s, not billing) and `RUST_LOG=warn` (per-request
//! logs would dominate the cost). It is killed at the end, or on a panic, by a drop guard.
//!
//! The load comes from a small HTTP/1.1 client in this process, the equivalent of
//! `wrk -c50`: N keep-alive connections, each sending its next request as soon as the last
//! answer's body is read, for a fixed time. The client runs on a tokio runtime with one
//! thread, so on a 2-core machine the server gets the other core. Billed is
//! `GET /v1/echo` with `Authorization: Bearer demo-rich` (price 1), free is `GET /health`.
//! Every answer must be a 200 and every billed one must carry `credits-cost`; anything else
//! is counted as an error and reported.
//!
//! * Section 2, throughput on `MemoryLedger`: 50 connections, free and billed runs alternated
//!   (3 rounds of 3 s each, so drift hits both alike); req/s are medians of the rounds, and
//!   billed / free is the figure held to a target. The CPU each process spent per request
//!   (quickstart and client from `/proc/<pid>/stat`, redis-server from `INFO cpu`) is
//!   reported too, to tell where billed falls short: once the cores are busy, billed / free
//!   follows the ratio of CPU per request of all of them.
//! * Section 3, the same on `RedisLedger` (`REDIS_URL` set, a throwaway `redis-server`):
//!   quickstart, redis-server and the client then share the 2 cores.
//! * Section 4, the critical path on Redis, at a load that does not saturate (4 connections):
//!   p50/p99 latency of free and billed requests, and the Redis round trip (`PING` from a
//!   client in this process, sampled every millisecond during the billed runs). A billed
//!   request should add one round trip (the reserve; the settle runs after the response
//!   head is out). Then `INFO commandstats` deltas over a counted batch of billed requests
//!   give the `EVALSHA` calls per billed request (reserve + settle = 2), and the time Redis
//!   spends inside each (a `PING` runs no script; the reserve's round trip does).
//!
//! * Section 5, credit leases: the quickstart on Redis with `CREDITS_LEASES=1` (busy
//!   accounts billed in process, flushed every second). Billed / free as in section 3, then
//!   the script calls Redis ran (`FCALL` + `EVALSHA` in `INFO commandstats`, the count
//!   `MONITOR` would show, without `MONITOR`'s own cost) per billed request over 10 s at
//!   saturation, background work included.
//! * Section 9, scale out (numbered after the redis bench's 6 to 8: the report merges the
//!   sections of every bench): the quickstart (no leases) on one Redis master, and on a
//!   Redis Cluster of three masters (`REDIS_CLUSTER_URLS`), each seeded with 1,000 accounts
//!   (`DEMO_ACCOUNTS`); billed `GET /v1/echo` at 50 connections with the keys round-robin
//!   request by request, so the accounts (and their hash slots) spread over the masters.
//!   Runs alternate between the two (with a free run, no Redis, as the ceiling of quickstart
//!   and client); medians of the billed req/s, the ratio 3 masters / 1 master, and the
//!   masters' CPU per billed request (`INFO cpu`, summed), whose inverse is the billed
//!   requests a second one Redis core sustains. Everything shares the same 2 cores, so the
//!   ratio here is bounded by the cores, not by Redis. `HTTP_BENCH_PARTS=9` runs it alone.
//!
//! `cargo bench --bench http` (about two minutes, plus the builds); results also go to
//! `target/bench-report/http.json`.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::header::HeaderValue;
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use support::redis_server::{free_port, BenchCluster, BenchRedis};
use support::report::{Report, Target};
use tokio::net::TcpStream;

/// Enough that the account never runs dry, and below 2^53 − 1 (the ledger's ceiling).
const RICH_CREDITS: &str = "1000000000000000";
/// Connections of the throughput runs, as `wrk -c50`.
const SATURATING: usize = 50;
/// Connections of the latency runs: a load the server keeps up with without queueing.
const MODERATE: usize = 4;
const ROUNDS: usize = 3;
const THROUGHPUT_RUN: Duration = Duration::from_secs(3);
const LATENCY_RUN: Duration = Duration::from_secs(2);
/// Billed requests counted against `INFO commandstats`.
const COUNTED: u64 = 2_000;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Free,
    Billed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Free => "free",
            Kind::Billed => "billed",
        }
    }
}

/// The quickstart process; killed on drop, so a panicking bench leaves nothing behind.
struct Quickstart {
    child: Child,
    addr: SocketAddr,
}

impl Quickstart {
    fn start(binary: &PathBuf, redis_url: Option<&str>) -> Self {
        Self::start_with(binary, redis_url, &[])
    }

    /// Started with `env` set as well.
    fn start_with(binary: &PathBuf, redis_url: Option<&str>, env: &[(&str, &str)]) -> Self {
        let port = free_port().expect("a free loopback port");
        let mut cmd = Command::new(binary);
        cmd.env_remove("CREDITS_LEASES")
            .env_remove("REDIS_CLUSTER_URLS")
            .env_remove("DEMO_ACCOUNTS");
        for (name, value) in env {
            cmd.env(name, value);
        }
        cmd.env("PORT", port.to_string())
            .env("DEMO_RICH_CREDITS", RICH_CREDITS)
            .env("RUST_LOG", "warn")
            .env_remove("REDIS_URL")
            // The banner of curl lines is for people; warnings still reach stderr.
            .stdout(Stdio::null());
        if let Some(url) = redis_url {
            cmd.env("REDIS_URL", url);
        }
        let child = cmd.spawn().expect("start the quickstart");
        let mut this = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !health_ok(this.addr) {
            if let Ok(Some(status)) = this.child.try_wait() {
                panic!("the quickstart exited before serving: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the quickstart did not answer GET /health within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        this
    }

    /// CPU seconds (user + system, all threads) the process has used so far.
    fn cpu_secs(&self) -> f64 {
        cpu_secs(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One blocking `GET /health`; used only while waiting for the server to come up.
fn health_ok(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let sent = s.write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    sent.is_ok() && s.read_to_string(&mut answer).is_ok() && answer.starts_with("HTTP/1.1 200")
}

/// `utime + stime` from a `/proc/<pid>/stat` file. Fields are counted after the `)` that
/// ends the command name, which may itself hold spaces; ticks are USER_HZ, 100 on Linux.
fn cpu_secs(stat_path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(stat_path) else {
        return f64::NAN;
    };
    let after_name = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// The release quickstart binary, built first when it is not there. An existing binary is
/// used as is (its age is printed), so a bench run never waits on a rebuild it did not need.
fn quickstart_binary() -> PathBuf {
    let target = support::report::report_dir()
        .parent()
        .expect("the report directory is under the target directory")
        .to_path_buf();
    let binary = target
        .join("release/examples/quickstart")
        .with_extension(std::env::consts::EXE_EXTENSION);
    if !binary.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        println!("building {} ...", binary.display());
        let status = Command::new(cargo)
            .args(["build", "--release", "--example", "quickstart"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --release --example quickstart failed"
        );
        assert!(binary.exists(), "no {} after the build", binary.display());
    }
    let age = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map_or(String::from("?"), |d| format!("{} s", d.as_secs()));
    println!("system under test: {} (built {age} ago)", binary.display());
    binary
}

/// What one connection (or, merged, one run) saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    /// Per request, ns, only when asked for.
    latencies: Vec<u64>,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies.extend(other.latencies);
    }
}

/// A request of `kind`; a billed one sends `auth` as its `Authorization`.
fn request(kind: Kind, auth: &HeaderValue) -> Request<Empty<Bytes>> {
    let builder = Request::get(match kind {
        Kind::Free => "/health",
        Kind::Billed => "/v1/echo",
    })
    .header(header::HOST, "bench");
    let builder = match kind {
        Kind::Free => builder,
        Kind::Billed => builder.header(header::AUTHORIZATION, auth.clone()),
    };
    builder.body(Empty::new()).unwrap()
}

/// `Authorization` values of the `DEMO_ACCOUNTS` keys, `Bearer demo-key-<i>` for `i < n`.
fn demo_keys(n: usize) -> Arc<[HeaderValue]> {
    (0..n)
        .map(|i| HeaderValue::try_from(format!("Bearer demo-key-{i}")).unwrap())
        .collect()
}

/// Which keys a connection sends: `demo-rich` on every request, or `keys` round-robin over
/// the connections, request by request (connection `index` of `of` sends keys `index`,
/// `index + of`, …), so every key is used and no two connections send the same one.
#[derive(Clone)]
struct Keys {
    keys: Option<Arc<[HeaderValue]>>,
    index: usize,
    of: usize,
}

impl Keys {
    fn nth(&self, sent: u64) -> HeaderValue {
        match &self.keys {
            Some(keys) if !keys.is_empty() => {
                let i = (self.index as u64 + sent * self.of as u64) % keys.len() as u64;
                keys[i as usize].clone()
            }
            _ => HeaderValue::from_static("Bearer demo-rich"),
        }
    }
}

/// One keep-alive connection sending `kind` back to back until `until`, or until it has
/// had `max` answers. A transport error ends the connection (counted): reconnecting in a
/// loop would hide a server that died.
async fn connection(
    addr: SocketAddr,
    kind: Kind,
    keys: Keys,
    record: bool,
    max: u64,
    until: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            tally.error(format!("connect: {e}"));
            return tally;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match http1::handshake(TokioIo::new(stream)).await {
        Ok(pair) => pair,
        Err(e) => {
            tally.error(format!("handshake: {e}"));
            return tally;
        }
    };
    tokio::spawn(conn);
    while Instant::now() < until && tally.ok + tally.errors < max {
        let start = Instant::now();
        let auth = keys.nth(tally.ok + tally.errors);
        let response = match sender.send_request(request(kind, &auth)).await {
            Ok(r) => r,
            Err(e) => {
                tally.error(format!("send: {e}"));
                break;
            }
        };
        let status = response.status();
        let priced = response.headers().contains_key("credits-cost");
        if let Err(e) = response.into_body().collect().await {
            tally.error(format!("body: {e}"));
            break;
        }
        if record {
            tally.latencies.push(start.elapsed().as_nanos() as u64);
        }
        if status != StatusCode::OK {
            tally.error(format!("{} answered {status}", kind.name()));
        } else if kind == Kind::Billed && !priced {
            tally.error("billed 200 without credits-cost".into());
        } else {
            tally.ok += 1;
        }
    }
    tally
}

type RedisCon = redis::aio::MultiplexedConnection;

/// A connection of the bench's own to the Redis at `url` (for `INFO` and `CONFIG`).
fn connect(rt: &tokio::runtime::Runtime, url: String) -> RedisCon {
    rt.block_on(async {
        redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await
    })
    .expect("connect to the bench redis")
}

/// One run of load: what to send, how, and what to watch meanwhile.
#[derive(Clone, Copy)]
struct Load<'a> {
    kind: Kind,
    conns: usize,
    time: Duration,
    max_per_conn: u64,
    /// Keep each request's latency.
    record: bool,
    /// The bench redis, to read its CPU time around the run.
    redis: Option<&'a RedisCon>,
    /// Sample the Redis round trip with `PING` during the run (needs `redis`).
    ping: bool,
    /// Billed requests spread round-robin over these keys (`DEMO_ACCOUNTS`), instead of
    /// all on `demo-rich`.
    keys: Option<&'a Arc<[HeaderValue]>>,
}

impl<'a> Load<'a> {
    fn new(kind: Kind, conns: usize, time: Duration) -> Self {
        Self {
            kind,
            conns,
            time,
            max_per_conn: u64::MAX,
            record: false,
            redis: None,
            ping: false,
            keys: None,
        }
    }

    fn redis(self, redis: Option<&'a RedisCon>) -> Self {
        Self { redis, ..self }
    }
}

/// A finished run.
struct Run {
    kind: Kind,
    tally: Tally,
    secs: f64,
    server_cpu: f64,
    client_cpu: f64,
    redis_cpu: Option<f64>,
    /// `PING` round trips sampled during the run, ns.
    pings: Vec<u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.tally.ok as f64 / self.secs
    }

    /// CPU per answered request, µs.
    fn per_req_us(&self, cpu_secs: f64) -> f64 {
        cpu_secs * 1e6 / self.tally.ok.max(1) as f64
    }

    /// One line for the log: the figures behind the medians, and who used the CPU.
    fn describe(&self) -> String {
        let redis = match self.redis_cpu {
            Some(cpu) => format!(", redis-server {:>5.1} µs", self.per_req_us(cpu)),
            None => String::new(),
        };
        let first_error = match &self.tally.first_error {
            Some(e) => format!(" (first: {e})"),
            None => String::new(),
        };
        format!(
            "{:>6}: {:>6.0} req/s; CPU/req: quickstart {:>5.1} µs{redis}, client {:>4.1} µs; \
             errors {}{first_error}",
            self.kind.name(),
            self.rate(),
            self.per_req_us(self.server_cpu),
            self.per_req_us(self.client_cpu),
            self.tally.errors,
        )
    }
}

fn run(rt: &tokio::runtime::Runtime, server: &Quickstart, load: Load<'_>) -> Run {
    let redis_before = load.redis.map(|con| redis_cpu(rt, con));
    let server_before = server.cpu_secs();
    let client_before = cpu_secs("/proc/self/stat");
    let start = Instant::now();
    let until = start + load.time;
    let (tally, pings) = rt.block_on(async {
        let pinger = load.redis.filter(|_| load.ping).cloned().map(|mut con| {
            tokio::spawn(async move {
                let mut pings = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    let pong: redis::RedisResult<String> =
                        redis::cmd("PING").query_async(&mut con).await;
                    pong.expect("PING the bench redis");
                    pings.push(t.elapsed().as_nanos() as u64);
                    // Sampling, not loading: Redis should be as busy as the service makes it.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                pings
            })
        });
        let tasks: Vec<_> = (0..load.conns)
            .map(|index| {
                let Load { kind, record, .. } = load;
                let keys = Keys {
                    keys: load.keys.cloned(),
                    index,
                    of: load.conns,
                };
                tokio::spawn(connection(
                    server.addr,
                    kind,
                    keys,
                    record,
                    load.max_per_conn,
                    until,
                ))
            })
            .collect();
        let mut tally = Tally::default();
        for task in tasks {
            tally.merge(task.await.expect("a load connection panicked"));
        }
        let pings = match pinger {
            Some(p) => p.await.expect("the PING sampler panicked"),
            None => Vec::new(),
        };
        (tally, pings)
    });
    let secs = start.elapsed().as_secs_f64();
    Run {
        kind: load.kind,
        tally,
        secs,
        server_cpu: server.cpu_secs() - server_before,
        client_cpu: cpu_secs("/proc/self/stat") - client_before,
        redis_cpu: load
            .redis
            .zip(redis_before)
            .map(|(con, before)| redis_cpu(rt, con) - before),
        pings,
    }
}

/// The load client's runtime: one thread, so the server keeps the other core of two.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Medians of `ROUNDS` alternated free and billed runs at 50 connections.
struct Alternated {
    free: f64,
    billed: f64,
    free_cpu_us: f64,
    billed_cpu_us: f64,
    /// redis-server CPU per billed request, µs, when on Redis.
    billed_redis_us: Option<f64>,
    /// CPU per request of every process in the loop (quickstart, client, redis-server), µs.
    free_total_us: f64,
    billed_total_us: f64,
    errors: u64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn alternate(
    rt: &tokio::runtime::Runtime,
    server: &Quickstart,
    redis: Option<&RedisCon>,
) -> Alternated {
    // Warm-up: connections, the API-key cache, the Lua scripts, the allocator's pools.
    for kind in [Kind::Free, Kind::Billed] {
        let warm_up = Load::new(kind, SATURATING, Duration::from_millis(500));
        run(rt, server, warm_up);
    }
    let mut free = Vec::new();
    let mut billed = Vec::new();
    for round in 1..=ROUNDS {
        for kind in [Kind::Free, Kind::Billed] {
            let r = run(
                rt,
                server,
                Load::new(kind, SATURATING, THROUGHPUT_RUN).redis(redis),
            );
            println!("    round {round} {}", r.describe());
            match kind {
                Kind::Free => free.push(r),
                Kind::Billed => billed.push(r),
            }
        }
    }
    let med = |runs: &[Run], f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let total = |r: &Run| r.per_req_us(r.server_cpu + r.client_cpu + r.redis_cpu.unwrap_or(0.0));
    Alternated {
        free: med(&free, &Run::rate),
        billed: med(&billed, &Run::rate),
        free_cpu_us: med(&free, &|r| r.per_req_us(r.server_cpu)),
        billed_cpu_us: med(&billed, &|r| r.per_req_us(r.server_cpu)),
        billed_redis_us: redis
            .map(|_| med(&billed, &|r| r.per_req_us(r.redis_cpu.unwrap_or(f64::NAN)))),
        free_total_us: med(&free, &total),
        billed_total_us: med(&billed, &total),
        errors: free.iter().chain(&billed).map(|r| r.tally.errors).sum(),
    }
}

fn throughput_rows(report: &mut Report, section: &str, a: &Alternated, ratio_what: &str, min: f64) {
    let runs = format!(
        "{SATURATING} connections, median of {ROUNDS} × {} s",
        THROUGHPUT_RUN.as_secs()
    );
    report.row(
        section,
        &format!("free GET /health, {runs}"),
        a.free,
        "req/s",
        Target::None,
    );
    report.row(
        section,
        &format!("billed GET /v1/echo, {runs}"),
        a.billed,
        "req/s",
        Target::None,
    );
    report.row(
        section,
        ratio_what,
        a.billed / a.free,
        "x",
        Target::AtLeast(min),
    );
    report.row(
        section,
        "errors (non-200, transport, billed 200 without credits-cost)",
        a.errors as f64,
        "responses",
        Target::AtMost(0.0),
    );
    // Where the difference goes: all processes share the two cores, so once they are busy
    // the throughput ratio follows the ratio of CPU spent per request by all of them.
    report.row(
        section,
        "quickstart CPU per free request",
        a.free_cpu_us,
        "µs",
        Target::None,
    );
    report.row(
        section,
        "quickstart CPU per billed request",
        a.billed_cpu_us,
        "µs",
        Target::None,
    );
    if let Some(us) = a.billed_redis_us {
        report.row(
            section,
            "redis-server CPU per billed request",
            us,
            "µs",
            Target::None,
        );
    }
    report.row(
        section,
        "CPU per request of all processes (incl. load client): free / billed",
        a.free_total_us / a.billed_total_us,
        "x",
        Target::None,
    );
}

fn memory_throughput(rt: &tokio::runtime::Runtime, binary: &PathBuf, report: &mut Report) {
    let section = "2. HTTP throughput (quickstart, MemoryLedger)";
    println!("{section}");
    let server = Quickstart::start(binary, None);
    let a = alternate(rt, &server, None);
    // The in-process issue's target: billing a request costs the quickstart at most a
    // twentieth of its throughput.
    throughput_rows(report, section, &a, "billed / free throughput", 0.95);
}

/// `INFO <section>` of the bench redis.
fn info(rt: &tokio::runtime::Runtime, con: &RedisCon, section: &str) -> String {
    let mut con = con.clone();
    rt.block_on(redis::cmd("INFO").arg(section).query_async(&mut con))
        .expect("INFO from the bench redis")
}

/// `(name, calls, usec)` of every `cmdstat_<name>` line of `INFO commandstats`.
fn command_stats(rt: &tokio::runtime::Runtime, con: &RedisCon) -> Vec<(String, u64, u64)> {
    info(rt, con, "commandstats")
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((name.to_string(), field("calls")?, field("usec")?))
        })
        .collect()
}

/// `used_cpu_sys + used_cpu_user` of the redis-server, seconds.
fn redis_cpu(rt: &tokio::runtime::Runtime, con: &RedisCon) -> f64 {
    info(rt, con, "cpu")
        .lines()
        .filter_map(|l| match l.split_once(':')? {
            ("used_cpu_sys" | "used_cpu_user", v) => v.trim().parse::<f64>().ok(),
            _ => None,
        })
        .sum()
}

fn redis_sections(rt: &tokio::runtime::Runtime, binary: &PathBuf, report: &mut Report) {
    let Some(redis) = BenchRedis::start() else {
        println!("redis-server is not installed: sections 3 and 4 skipped");
        return;
    };
    let server = Quickstart::start(binary, Some(&redis.url()));
    let con = connect(rt, redis.url());

    let section = "3. Redis efficiency";
    println!("{section}");
    let a = alternate(rt, &server, Some(&con));
    throughput_rows(
        report,
        section,
        &a,
        "billed / free throughput (quickstart, redis-server and load client share 2 cores)",
        0.4,
    );

    let (added, ping) = critical_path(rt, &server, &con, report);
    let script_us = commands_per_request(rt, &server, &con, report);
    // PING has no script to run; the reserve does. One round trip of the reserve is the
    // round trip plus its script's time in Redis: near 1 here means one, 2 would mean two.
    report.row(
        "4. critical path (Redis)",
        "p50 added / (PING p50 + Redis time per script call)",
        added / (ping + script_us),
        "x",
        Target::None,
    );
}

fn critical_path(
    rt: &tokio::runtime::Runtime,
    server: &Quickstart,
    con: &RedisCon,
    report: &mut Report,
) -> (f64, f64) {
    let section = "4. critical path (Redis)";
    println!("{section}");
    for kind in [Kind::Free, Kind::Billed] {
        run(
            rt,
            server,
            Load::new(kind, MODERATE, Duration::from_millis(300)),
        );
    }
    let mut free = Vec::new();
    let mut billed = Vec::new();
    let mut pings = Vec::new();
    let mut errors = 0;
    for _ in 0..ROUNDS {
        for kind in [Kind::Free, Kind::Billed] {
            let load = Load {
                record: true,
                // The round trip that matters is the one the reserve meets: during billed load.
                ping: kind == Kind::Billed,
                ..Load::new(kind, MODERATE, LATENCY_RUN).redis(Some(con))
            };
            let r = run(rt, server, load);
            println!("    {}", r.describe());
            errors += r.tally.errors;
            match kind {
                Kind::Free => free.extend(r.tally.latencies),
                Kind::Billed => billed.extend(r.tally.latencies),
            }
            pings.extend(r.pings);
        }
    }
    for v in [&mut free, &mut billed, &mut pings] {
        v.sort_unstable();
    }
    println!(
        "    {} free, {} billed requests, {} PINGs sampled",
        free.len(),
        billed.len(),
        pings.len()
    );
    let us = |v: &[u64], p: f64| percentile(v, p) as f64 / 1e3;
    let added = us(&billed, 0.5) - us(&free, 0.5);
    let ping = us(&pings, 0.5);
    let runs = format!(
        "{MODERATE} connections, {ROUNDS} × {} s",
        LATENCY_RUN.as_secs()
    );
    let rows = [
        (format!("p50 free ({runs})"), us(&free, 0.5)),
        (format!("p50 billed ({runs})"), us(&billed, 0.5)),
        ("p50 added (billed − free)".into(), added),
        ("p99 free".into(), us(&free, 0.99)),
        ("p99 billed".into(), us(&billed, 0.99)),
        (
            "PING p50 (Redis round trip, from the bench, during the billed runs)".into(),
            ping,
        ),
    ];
    for (what, value) in rows {
        report.row(section, &what, value, "µs", Target::None);
    }
    report.row(
        section,
        "p50 added / (Redis round trip × 1.1)",
        added / (ping * 1.1),
        "x",
        Target::AtMost(1.0),
    );
    report.row(
        section,
        "errors in the latency runs",
        errors as f64,
        "responses",
        Target::AtMost(0.0),
    );
    (added, ping)
}

/// Redis commands per billed request, from `INFO commandstats` deltas over a counted batch;
/// returns the Redis time per `EVALSHA`, µs.
fn commands_per_request(
    rt: &tokio::runtime::Runtime,
    server: &Quickstart,
    con: &RedisCon,
    report: &mut Report,
) -> f64 {
    let section = "4. critical path (Redis)";
    let before = command_stats(rt, con);
    let load = Load {
        max_per_conn: COUNTED / MODERATE as u64,
        ..Load::new(Kind::Billed, MODERATE, Duration::from_secs(60))
    };
    let r = run(rt, server, load);
    assert_eq!(
        r.tally.errors, 0,
        "counted billed requests failed: {:?}",
        r.tally.first_error
    );
    // The settle runs after the response is out: read again until the counts stop moving.
    let mut after = command_stats(rt, con);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let again = command_stats(rt, con);
        if again == after || Instant::now() > deadline {
            break;
        }
        after = again;
    }
    let delta = |name: &str| {
        let get = |v: &[(String, u64, u64)]| {
            v.iter()
                .find(|(n, ..)| n == name)
                .map_or((0, 0), |&(_, calls, usec)| (calls, usec))
        };
        let ((c0, u0), (c1, u1)) = (get(&before), get(&after));
        (c1 - c0, u1 - u0)
    };
    let n = r.tally.ok as f64;
    // The account scripts are `FCALL`s (Redis Functions) or, below Redis 7.0, `EVALSHA`s:
    // both are script calls.
    let is_script = |name: &str| name == "fcall" || name == "evalsha";
    let (fcall, fcall_usec) = delta("fcall");
    let (evalsha, evalsha_usec) = delta("evalsha");
    let (scripts, scripts_usec) = (fcall + evalsha, fcall_usec + evalsha_usec);
    // Redis counts the commands a script runs (`redis.call`) in commandstats too, so these
    // are the scripts' own reads and writes unless one of them is a command sent directly.
    let inside: Vec<(String, u64)> = after
        .iter()
        .filter(|(name, ..)| !is_script(name) && name != "info")
        .map(|(name, ..)| (name.clone(), delta(name).0))
        .filter(|&(_, calls)| calls > 0)
        .collect();
    println!(
        "    {} billed requests: {fcall} FCALL, {evalsha} EVALSHA; the other commands: {inside:?}",
        r.tally.ok
    );
    // On Redis 7 the account scripts are `FCALL`s; the due-index passes of the background
    // run by `EVALSHA` (reported apart: they are not on any request's path). A sweeper pass
    // that finds an account due is an `FCALL` too, hence the half percent over 2 allowed.
    report.row(
        section,
        &format!(
            "account script calls (FCALL) per billed request (INFO commandstats over {} \
             requests; 2 on the request path, a sweeper pass may add one)",
            r.tally.ok
        ),
        fcall as f64 / n,
        "calls",
        Target::AtMost(2.01),
    );
    report.row(
        section,
        "background script calls (EVALSHA: due-index, sweeper) over the same requests",
        evalsha as f64,
        "calls",
        Target::None,
    );
    report.row(
        section,
        "commands run inside those scripts, per billed request",
        inside.iter().map(|(_, calls)| *calls).sum::<u64>() as f64 / n,
        "calls",
        Target::None,
    );
    let script_us = scripts_usec as f64 / scripts.max(1) as f64;
    report.row(
        section,
        "Redis time per script call (commandstats usec / calls)",
        script_us,
        "µs",
        Target::None,
    );
    script_us
}

fn lease_section(rt: &tokio::runtime::Runtime, binary: &PathBuf, report: &mut Report) {
    let Some(redis) = BenchRedis::start() else {
        println!("redis-server is not installed: section 5 skipped");
        return;
    };
    let section = "5. credit leases (quickstart, Redis, CREDITS_LEASES=1)";
    println!("{section}");
    let server = Quickstart::start_with(binary, Some(&redis.url()), &[("CREDITS_LEASES", "1")]);
    let con = connect(rt, redis.url());
    let a = alternate(rt, &server, Some(&con));
    throughput_rows(
        report,
        section,
        &a,
        "billed / free throughput with leases (quickstart, redis-server and load client share 2 cores)",
        0.8,
    );
    let scripts = |stats: &[(String, u64, u64)]| -> u64 {
        stats
            .iter()
            .filter(|(name, ..)| name == "fcall" || name == "evalsha")
            .map(|&(_, calls, _)| calls)
            .sum()
    };
    let before = scripts(&command_stats(rt, &con));
    let r = run(
        rt,
        &server,
        Load::new(Kind::Billed, SATURATING, Duration::from_secs(10)),
    );
    let calls = scripts(&command_stats(rt, &con)) - before;
    let n = r.tally.ok.max(1) as f64;
    println!(
        "    {} billed requests in 10 s: {calls} script calls",
        r.tally.ok
    );
    report.row(
        section,
        "billed requests a second on one account, 10 s at saturation",
        r.tally.ok as f64 / 10.0,
        "req/s",
        Target::AtLeast(1000.0),
    );
    report.row(
        section,
        "script calls (FCALL + EVALSHA) per billed request, background work included",
        calls as f64 / n,
        "calls",
        Target::AtMost(0.05),
    );
}

/// Accounts (`DEMO_ACCOUNTS`) the billed load of section 9 is spread over.
const SCALE_ACCOUNTS: usize = 1_000;

/// One Redis deployment of section 9: its quickstart and a connection to each master.
struct Masters<'a> {
    name: &'static str,
    server: &'a Quickstart,
    cons: Vec<RedisCon>,
}

/// What one run of section 9 measured on a deployment, besides the run itself.
struct OnMasters {
    run: Run,
    /// CPU seconds every master used during the run, summed.
    redis_cpu: f64,
    /// Script calls (`FCALL` + `EVALSHA`) each master ran during the run.
    scripts: Vec<u64>,
    /// Cores the whole machine kept busy during the run (`/proc/stat`), this bench's
    /// processes and anything else alike.
    machine_busy: f64,
}

impl OnMasters {
    /// Cores this bench's processes kept busy: quickstart, load client and masters.
    fn bench_busy(&self) -> f64 {
        (self.run.server_cpu + self.run.client_cpu + self.redis_cpu) / self.run.secs
    }
}

/// Busy CPU seconds of the whole machine so far: the `cpu` line of `/proc/stat` less its
/// idle and iowait ticks (USER_HZ, 100 on Linux).
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    if ticks.len() < 5 {
        return f64::NAN;
    }
    (ticks.iter().sum::<f64>() - ticks[3] - ticks[4]) / 100.0
}

/// `run`, with the CPU and script calls of every master read around it.
fn run_on_masters(rt: &tokio::runtime::Runtime, on: &Masters<'_>, load: Load<'_>) -> OnMasters {
    let scripts = |con: &RedisCon| -> u64 {
        command_stats(rt, con)
            .iter()
            .filter(|(name, ..)| name == "fcall" || name == "evalsha")
            .map(|&(_, calls, _)| calls)
            .sum()
    };
    let cpu_before: f64 = on.cons.iter().map(|con| redis_cpu(rt, con)).sum();
    let scripts_before: Vec<u64> = on.cons.iter().map(scripts).collect();
    let machine_before = machine_busy_secs();
    let measured = run(rt, on.server, load);
    let machine_busy = (machine_busy_secs() - machine_before) / measured.secs;
    let redis_cpu = on.cons.iter().map(|con| redis_cpu(rt, con)).sum::<f64>() - cpu_before;
    let scripts = on
        .cons
        .iter()
        .zip(scripts_before)
        .map(|(con, before)| scripts(con) - before)
        .collect();
    OnMasters {
        run: measured,
        redis_cpu,
        scripts,
        machine_busy,
    }
}

/// Section 9: the same billed load on one Redis master and on a three-master Redis Cluster,
/// alternated round by round, spread over `SCALE_ACCOUNTS` accounts (no leases, so every
/// billed request runs its reserve and settle scripts in Redis).
fn scale_out_section(rt: &tokio::runtime::Runtime, binary: &PathBuf, report: &mut Report) {
    let section = "9. scale out on Redis Cluster (quickstart, 1,000 accounts, no leases)";
    println!("{section}");
    // `--cluster-enabled no` (the default) for the one master; otherwise the same flags.
    let (Some(single), Some(cluster)) = (BenchRedis::start(), BenchCluster::start()) else {
        println!("redis-server or redis-cli is not installed: section 9 skipped");
        return;
    };
    let accounts = SCALE_ACCOUNTS.to_string();
    let cluster_urls = cluster.urls().join(",");
    let one = Quickstart::start_with(
        binary,
        Some(&single.url()),
        &[("DEMO_ACCOUNTS", accounts.as_str())],
    );
    let three = Quickstart::start_with(
        binary,
        None,
        &[
            ("DEMO_ACCOUNTS", accounts.as_str()),
            ("REDIS_CLUSTER_URLS", cluster_urls.as_str()),
        ],
    );
    // A plain connection to each master, for `INFO`: not routed, so each answers for itself.
    let connect = |url: String| connect(rt, url);
    let deployments = [
        Masters {
            name: "1 master",
            server: &one,
            cons: vec![connect(single.url())],
        },
        Masters {
            name: "3 masters",
            server: &three,
            cons: cluster.urls().into_iter().map(connect).collect(),
        },
    ];
    let keys = demo_keys(SCALE_ACCOUNTS);
    let billed = |time| Load {
        keys: Some(&keys),
        ..Load::new(Kind::Billed, SATURATING, time)
    };
    // Warm-up: connections, scripts, and each of the 1,000 keys looked up once (then cached).
    for on in &deployments {
        run(rt, on.server, billed(Duration::from_secs(1)));
    }
    run(
        rt,
        &one,
        Load::new(Kind::Free, SATURATING, Duration::from_millis(500)),
    );
    let mut free = Vec::new();
    let mut runs: [Vec<OnMasters>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=ROUNDS {
        // The free ceiling (quickstart and client alone, no Redis) in the same rounds.
        let r = run(rt, &one, Load::new(Kind::Free, SATURATING, THROUGHPUT_RUN));
        println!("    round {round} (no Redis) {}", r.describe());
        free.push(r);
        for (on, runs) in deployments.iter().zip(&mut runs) {
            let m = run_on_masters(rt, on, billed(THROUGHPUT_RUN));
            println!(
                "    round {round} {:>9} {}, redis-server (all masters) {:.1} µs/req, \
                 {:.2} cores busy; script calls by master {:?}; cores busy: this bench \
                 {:.2}, machine {:.2}",
                on.name,
                m.run.describe(),
                m.run.per_req_us(m.redis_cpu),
                m.redis_cpu / m.run.secs,
                m.scripts,
                m.bench_busy(),
                m.machine_busy,
            );
            runs.push(m);
        }
    }
    let med =
        |runs: &[OnMasters], f: &dyn Fn(&OnMasters) -> f64| median(runs.iter().map(f).collect());
    let rate = |m: &OnMasters| m.run.rate();
    let redis_us = |m: &OnMasters| m.run.per_req_us(m.redis_cpu);
    let app_us = |m: &OnMasters| m.run.per_req_us(m.run.server_cpu);
    let busy = |m: &OnMasters| m.redis_cpu / m.run.secs;
    // The largest master's share of the script calls: 1/3 when the accounts spread evenly.
    let top_share = |m: &OnMasters| {
        let total = m.scripts.iter().sum::<u64>().max(1) as f64;
        *m.scripts.iter().max().unwrap_or(&0) as f64 / total
    };
    let [one_runs, three_runs] = &runs;
    let runs_text = format!(
        "{SATURATING} connections, {SCALE_ACCOUNTS} accounts round-robin, median of {ROUNDS} × {} s",
        THROUGHPUT_RUN.as_secs()
    );
    let (one_rate, three_rate) = (med(one_runs, &rate), med(three_runs, &rate));
    report.row(
        section,
        &format!("free GET /health, no Redis (the quickstart + client ceiling), {SATURATING} connections"),
        median(free.iter().map(Run::rate).collect()),
        "req/s",
        Target::None,
    );
    report.row(
        section,
        &format!("billed GET /v1/echo on 1 master, {runs_text}"),
        one_rate,
        "req/s",
        Target::None,
    );
    report.row(
        section,
        &format!("billed GET /v1/echo on 3 masters (Redis Cluster), {runs_text}"),
        three_rate,
        "req/s",
        Target::None,
    );
    report.row(
        section,
        "billed throughput, 3 masters / 1 master (all on the same 2 cores: bounded by the cores, not Redis)",
        three_rate / one_rate,
        "x",
        Target::None,
    );
    for (on, runs) in deployments.iter().zip(&runs) {
        let us = med(runs, &redis_us);
        report.row(
            section,
            &format!(
                "redis-server CPU per billed request, {} (summed over masters)",
                on.name
            ),
            us,
            "µs",
            Target::None,
        );
        report.row(
            section,
            &format!(
                "billed requests a second per Redis core, {} (1 / CPU per request)",
                on.name
            ),
            1e6 / us,
            "req/s",
            Target::None,
        );
        report.row(
            section,
            &format!(
                "Redis cores busy during the billed runs, {} (summed)",
                on.name
            ),
            med(runs, &busy),
            "cores",
            Target::None,
        );
        report.row(
            section,
            &format!("quickstart CPU per billed request, {}", on.name),
            med(runs, &app_us),
            "µs",
            Target::None,
        );
        // Below 2 with nothing else running: the load is latency-bound, not core-bound.
        report.row(
            section,
            &format!(
                "cores busy during the billed runs, {}: quickstart + client + Redis",
                on.name
            ),
            med(runs, &OnMasters::bench_busy),
            "cores",
            Target::None,
        );
        report.row(
            section,
            &format!(
                "cores busy during the billed runs, {}: whole machine",
                on.name
            ),
            med(runs, &|m| m.machine_busy),
            "cores",
            Target::None,
        );
    }
    report.row(
        section,
        "largest master's share of the script calls, 3 masters (1/3 = even)",
        med(three_runs, &top_share),
        "x",
        Target::None,
    );
    report.row(
        section,
        "errors (non-200, transport, billed 200 without credits-cost)",
        free.iter()
            .map(|r| r.tally.errors)
            .chain(runs.iter().flatten().map(|m| m.run.tally.errors))
            .sum::<u64>() as f64,
        "responses",
        Target::AtMost(0.0),
    );
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let started = Instant::now();
    let binary = quickstart_binary();
    let rt = client_runtime();
    let mut report = Report::new("http");
    // Other work on the machine shows up as noise in every figure; say how much there was.
    println!(
        "load client: one thread ({} cores here; the server gets the rest); load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim_end()
    );
    // `HTTP_BENCH_PARTS=5` runs section 5 alone (2 is memory, 3 runs 3 and 4, 9 is the
    // Redis Cluster); `HTTP_BENCH_PARTS=2,9` runs two.
    let parts = std::env::var("HTTP_BENCH_PARTS").unwrap_or_default();
    let run_part = |part: &str| parts.is_empty() || parts.split(',').any(|p| p.trim() == part);
    if run_part("2") {
        memory_throughput(&rt, &binary, &mut report);
    }
    if run_part("3") {
        redis_sections(&rt, &binary, &mut report);
    }
    if run_part("5") {
        lease_section(&rt, &binary, &mut report);
    }
    if run_part("9") {
        scale_out_section(&rt, &binary, &mut report);
    }
    report.write();
    println!("http bench took {:.0} s", started.elapsed().as_secs_f64());
}
