//! Real `redis-server` processes for tests: one server ([`RedisServer`]) or a three-master
//! cluster ([`RedisCluster`]), each on free loopback ports in its own temporary directory.
//!
//! No shared global Redis, no mocks. A server is killed when its handle is dropped (also
//! when a test panics). A watchdog shell process also kills it, and removes its directory,
//! once the test process is gone, so a server kept in a `static` (never dropped) does not
//! outlive its test binary either.
//!
//! Nothing here sleeps and hopes: every wait polls a condition against a deadline.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::rig::{wait_for, POLL_INTERVAL};

/// How long a server may take to answer after it was started.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How many times a start is retried on other ports when a port was taken meanwhile.
const START_ATTEMPTS: usize = 5;

const NOT_INSTALLED: &str =
    "redis-server not found: install it with `apt-get install redis-server` (scripts/test does this)";

fn check_installed() {
    for tool in ["redis-server", "redis-cli"] {
        match Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if tool == "redis-server" {
                    panic!("{NOT_INSTALLED}");
                }
                panic!("redis-cli not found: install it with `apt-get install redis-tools` (scripts/test does this)");
            }
            Err(e) => panic!("cannot run {tool}: {e}"),
        }
    }
}

/// A loopback port nobody listens on right now (the kernel picks it). With `with_bus`, the
/// cluster bus port (`port + 10000`) is free too.
fn free_port(with_bus: bool) -> u16 {
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
        let port = listener.local_addr().expect("local addr").port();
        if !with_bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// Options of a [`RedisServer`].
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `--appendonly yes --appendfsync always`: every write is on disk before the reply,
    /// so a killed and restarted server keeps everything it acknowledged.
    pub aof_always: bool,
    /// `--cluster-enabled yes` (see [`RedisCluster`]).
    pub cluster: bool,
}

impl RedisOptions {
    /// Default options with an append-only file synced on every write.
    pub fn aof_always() -> Self {
        Self {
            aof_always: true,
            ..Self::default()
        }
    }
}

/// A `redis-server` on a free loopback port, in its own temporary directory.
///
/// Killed (SIGKILL) when dropped. [`restart`](Self::restart) starts it again on the same
/// port and in the same directory, so an append-only file survives.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    options: RedisOptions,
    dir: TempDir,
}

/// The figures of a packed account's `v`, in their places after its format mark (`false`):
/// lib.lua's `PACKED` (pinned by `tests/redis_packed_accounts.rs`,
/// `the_packed_value_keeps_each_figure_in_its_place`).
#[allow(dead_code)]
pub const PACKED_FIGURES: [&str; 21] = [
    "topped_up",
    "committed",
    "held",
    "credit_limit",
    "next_expiry",
    "due_holds",
    "audit_seq",
    "rate",
    "rate_at",
    "commits",
    "first_commit_at",
    "done_until",
    "fired",
    "horizon",
    "runway_fired",
    "depleted",
    "last_topup",
    "due_events",
    "events",
    "prune_at",
    "trail",
];

/// An account's books as Redis holds them ([`RedisServer::books`]).
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Books {
    /// Whether the account is packed (`v`), else in fields.
    pub packed: bool,
    pub topped_up: i64,
    pub committed: i64,
    pub held: i64,
}

impl RedisServer {
    /// Starts a server with default options: no persistence at all.
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a server with `options`.
    pub fn start_with(options: RedisOptions) -> Self {
        check_installed();
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("tower-credits-redis-")
                .tempdir()
                .expect("create a temporary directory");
            let mut server = Self {
                child: None,
                port: free_port(options.cluster),
                options: options.clone(),
                dir,
            };
            match server.spawn() {
                Ok(()) => return server,
                // The port was taken between the check and the bind: try another.
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts; last log:\n{last_log}");
    }

    /// Spawns the process and waits until it answers PING. On failure, returns its log.
    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().expect("utf-8 temp dir").to_owned();
        let mut args: Vec<&str> = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            &dir,
            "--enable-debug-command",
            "local",
            "--logfile",
            "server.log",
            "--daemonize",
            "no",
        ];
        if self.options.aof_always {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            args.extend(["--appendonly", "no"]);
        }
        if self.options.cluster {
            args.extend([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    panic!("{NOT_INSTALLED}");
                }
                panic!("cannot start redis-server: {e}")
            });
        spawn_watchdog(child.id(), self.dir.path());
        self.child = Some(child);

        let until = Instant::now() + START_DEADLINE;
        loop {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            if Instant::now() >= until {
                self.kill();
                return Err(format!(
                    "no PONG within {START_DEADLINE:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (where the append-only file and the log are).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL: no shutdown, no final fsync) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process (SIGSTOP): it keeps its connections but answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the server is not running");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Kills the server and starts it again on the same port, in the same directory (an
    /// append-only file is read back). Returns once it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        // The port was ours; only a very unlucky race takes it meanwhile.
        if let Err(log) = self.spawn() {
            panic!("redis-server did not restart on port {}:\n{log}", self.port);
        }
    }

    /// Runs `redis-cli -p <port> <args>` and returns its output, trimmed. Panics if the
    /// command fails or Redis answers an error.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// Like [`cli`](Self::cli), but returns an error reply instead of panicking.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        try_cli(self.port, args)
    }

    /// An account's books straight from Redis, in either form: `topped_up`, `committed` and
    /// `held` are the first three numbers of a packed account's MessagePack `v` (lib.lua's
    /// `PACKED`), else fields of their own (0 when absent).
    #[allow(dead_code)]
    pub fn books(&self, account: &str) -> Books {
        const SCRIPT: &str = "local v = redis.call('HGET', KEYS[1], 'v') \
            if v then \
              local r = {cmsgpack.unpack(v)} \
              if r[1] == false then table.remove(r, 1) end \
              return {1, r[1], r[2], r[3]} \
            end \
            local f = redis.call('HMGET', KEYS[1], 'topped_up', 'committed', 'held') \
            return {0, tonumber(f[1]) or 0, tonumber(f[2]) or 0, tonumber(f[3]) or 0}";
        let key = format!("credits:{{{account}}}:acct");
        let out = self.cli(&["EVAL", SCRIPT, "1", &key]);
        let n: Vec<i64> = out
            .lines()
            .map(|l| {
                l.parse()
                    .unwrap_or_else(|_| panic!("books of {account}: {out}"))
            })
            .collect();
        assert_eq!(n.len(), 4, "books of {account}: {out}");
        Books {
            packed: n[0] == 1,
            topped_up: n[1],
            committed: n[2],
            held: n[3],
        }
    }

    /// One figure of an account, read straight from Redis in either form (0 when absent):
    /// from a packed account's `v` by its place in [`PACKED_FIGURES`], else its field.
    #[allow(dead_code)]
    pub fn figure(&self, account: &str, name: &str) -> i64 {
        const SCRIPT: &str = "local v = redis.call('HGET', KEYS[1], 'v') \
            if v then \
              local r = {cmsgpack.unpack(v)} \
              if r[1] == false then table.remove(r, 1) end \
              local x = r[tonumber(ARGV[1])] \
              if not x or x < 0 then return '' end \
              return string.format('%.17g', x) \
            end \
            return redis.call('HGET', KEYS[1], ARGV[2]) or ''";
        let place = PACKED_FIGURES
            .iter()
            .position(|f| *f == name)
            .unwrap_or_else(|| panic!("{name} is not a figure of an account"))
            + 1;
        let key = format!("credits:{{{account}}}:acct");
        let value = self.cli(&["EVAL", SCRIPT, "1", &key, &place.to_string(), name]);
        if value.is_empty() {
            0
        } else {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name} of {account} = {value:?}"))
        }
    }

    /// How many entries an account's audit trail holds, in either form: a packed account's
    /// text `trail` (MessagePack values one after another) or the list `log`.
    #[allow(dead_code)]
    pub fn trail_len(&self, account: &str) -> u64 {
        const SCRIPT: &str = "local text = redis.call('GET', KEYS[1]) \
            if not text then return redis.call('LLEN', KEYS[2]) end \
            local n, at = 0, 0 \
            while at >= 0 and at < #text do \
              n = n + 1 \
              at = cmsgpack.unpack_limit(text, 1, at) \
            end \
            return n";
        let trail = format!("credits:{{{account}}}:trail");
        let log = format!("credits:{{{account}}}:log");
        let n = self.cli(&["EVAL", SCRIPT, "2", &trail, &log]);
        n.parse()
            .unwrap_or_else(|_| panic!("trail of {account}: {n}"))
    }

    /// Number of keys (`DBSIZE`).
    pub fn dbsize(&self) -> u64 {
        self.cli(&["DBSIZE"]).parse().expect("DBSIZE is a number")
    }

    /// Script calls run so far (`FCALL` and `EVALSHA`), from `INFO commandstats`.
    pub fn script_calls(&self) -> u64 {
        self.command_calls(&["fcall", "evalsha"])
    }

    /// Calls of the commands `names` (lowercase) the server has run, those run inside
    /// scripts included (`INFO commandstats`).
    pub fn command_calls(&self, names: &[&str]) -> u64 {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter(|l| {
                names
                    .iter()
                    .any(|n| l.starts_with(&format!("cmdstat_{n}:")))
            })
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Runs `redis-cli -p <port> <args>`; panics on failure or an error reply.
pub fn cli(port: u16, args: &[&str]) -> String {
    try_cli(port, args).unwrap_or_else(|e| panic!("redis-cli {args:?} on port {port} failed: {e}"))
}

/// Runs `redis-cli -p <port> <args>`: the output, trimmed, or the error Redis answered.
pub fn try_cli(port: u16, args: &[&str]) -> Result<String, String> {
    run_cli(port, &[], args)
}

/// Runs `redis-cli <flags> -p <port> <args>`: the output, trimmed, or the error.
fn run_cli(port: u16, flags: &[&str], args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(flags)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success()
        || stdout.starts_with("ERR")
        || stdout.starts_with("(error)")
        || stdout.starts_with("Could not connect")
    {
        return Err(format!("{stdout}{stderr}"));
    }
    Ok(stdout)
}

/// Whether a server on `port` answers `PING` with `PONG`.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(&mut stream).read_line(&mut line).is_ok() && line.starts_with("+PONG")
}

/// Kills `pid` and removes `dir` once this test process is gone; exits quietly when `pid`
/// exits first (a [`RedisServer::kill`] or a restart, which spawns a new watchdog).
fn spawn_watchdog(pid: u32, dir: &Path) {
    let script = format!(
        "while kill -0 {parent} 2>/dev/null; do kill -0 {pid} 2>/dev/null || exit 0; sleep 0.5; done; \
         kill -9 {pid} 2>/dev/null; rm -rf '{dir}'",
        parent = std::process::id(),
        dir = dir.display(),
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// Three `--cluster-enabled yes` masters (no replicas), joined with
/// `redis-cli --cluster create`, ready when every node reports `cluster_state:ok`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts and joins the cluster.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(RedisOptions {
                    cluster: true,
                    ..RedisOptions::default()
                })
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("[OK] All 16384 slots covered"),
            "redis-cli --cluster create failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        for node in &cluster.nodes {
            wait_for(
                &format!("cluster_state:ok on port {}", node.port()),
                START_DEADLINE,
                || {
                    let info = cli(node.port(), &["CLUSTER", "INFO"]);
                    (info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3"))
                        .then_some(())
                },
            );
        }
        cluster
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Runs `redis-cli -c <args>` (cluster mode: follows `MOVED` to the node that owns the
    /// key) against the first node; panics on failure or an error reply.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.nodes[0].port();
        run_cli(port, &["-c"], args)
            .unwrap_or_else(|e| panic!("redis-cli -c {args:?} on port {port} failed: {e}"))
    }

    /// Total number of keys over every node (`DBSIZE` summed).
    pub fn dbsize(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.cli(&["DBSIZE"]).parse::<u64>().expect("DBSIZE"))
            .sum()
    }
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.nodes).finish()
    }
}

/// Test certificates for TLS servers, made with rcgen: a CA, a certificate for `127.0.0.1`
/// and `localhost` signed by it (the server's, and the cluster bus's both ways), and a
/// client certificate signed by it (for mTLS). Each [`RedisTlsServer`] copies the PEM files
/// into its own directory.
pub struct TestCa {
    /// The CA's certificate, PEM: what a client gives to `tls_ca_pem`.
    pub ca_pem: String,
    /// The server's certificate and key, PEM.
    server: (String, String),
    /// A client certificate signed by the CA, PEM.
    pub client_cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub client_key_pem: String,
}

impl TestCa {
    /// A new CA and the certificates it signs.
    pub fn generate() -> Self {
        let (ca_pem, issuer) = new_ca("tower-credits test CA");
        let server = signed_pair(
            &issuer,
            "redis test server",
            &[
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_cert_pem, client_key_pem) = signed_pair(
            &issuer,
            "tower-credits test client",
            &[rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        );
        Self {
            ca_pem,
            server,
            client_cert_pem,
            client_key_pem,
        }
    }

    /// The certificate of another CA, which signed none of these certificates.
    pub fn unrelated_ca_pem() -> String {
        new_ca("an unrelated CA").0
    }

    /// A client certificate and key signed by another CA, PEM.
    pub fn unrelated_client_pair() -> (String, String) {
        let (_, issuer) = new_ca("an unrelated client CA");
        signed_pair(
            &issuer,
            "a stranger",
            &[rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    /// A server certificate for `127.0.0.1` signed by another CA, PEM (certificate, key).
    pub fn unrelated_server_pair() -> (String, String) {
        let (_, issuer) = new_ca("an unrelated server CA");
        signed_pair(
            &issuer,
            "an impostor",
            &[rcgen::ExtendedKeyUsagePurpose::ServerAuth],
        )
    }

    /// Writes `ca.crt`, `server.crt`, `server.key`, `client.crt` and `client.key` in `dir`.
    fn write_to(&self, dir: &Path) {
        for (name, pem) in [
            ("ca.crt", &self.ca_pem),
            ("server.crt", &self.server.0),
            ("server.key", &self.server.1),
            ("client.crt", &self.client_cert_pem),
            ("client.key", &self.client_key_pem),
        ] {
            std::fs::write(dir.join(name), pem).expect("write a test certificate");
        }
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

/// A self-signed CA: its certificate (PEM) and what signs with it.
fn new_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let mut params = rcgen::CertificateParams::new(Vec::new()).expect("no names to check");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().expect("generate a CA key");
    let cert = params.self_signed(&key).expect("self-sign the test CA");
    (cert.pem(), rcgen::Issuer::new(params, key))
}

/// A certificate for `127.0.0.1` and `localhost` signed by `issuer`: (certificate, key), PEM.
fn signed_pair(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    name: &str,
    usages: &[rcgen::ExtendedKeyUsagePurpose],
) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("valid test names");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages.to_vec();
    let key = rcgen::KeyPair::generate().expect("generate a test key");
    let cert = params
        .signed_by(&key, issuer)
        .expect("sign a test certificate");
    (cert.pem(), key.serialize_pem())
}

/// Whether a [`RedisTlsServer`] asks its clients for a certificate (`tls-auth-clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `tls-auth-clients yes`: a client without a certificate signed by the CA is refused.
    Required,
    /// `tls-auth-clients no`: no client certificate is asked for.
    Off,
}

/// A `redis-server` that speaks only TLS (`--port 0 --tls-port <port>`), with a
/// [`TestCa`]'s certificates, on a free loopback port in its own temporary directory.
/// Killed (SIGKILL) when dropped.
pub struct RedisTlsServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl RedisTlsServer {
    /// Starts a standalone TLS server.
    pub fn start(ca: &TestCa, auth: ClientAuth) -> Self {
        Self::start_node(ca, auth, false)
    }

    /// Starts a TLS server, `--cluster-enabled yes --tls-cluster yes` with `cluster`.
    fn start_node(ca: &TestCa, auth: ClientAuth, cluster: bool) -> Self {
        check_installed();
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("tower-credits-redis-tls-")
                .tempdir()
                .expect("create a temporary directory");
            ca.write_to(dir.path());
            let mut server = Self {
                child: None,
                port: free_port(cluster),
                dir,
            };
            match server.spawn(auth, cluster) {
                Ok(()) => return server,
                // The port was taken between the check and the bind: try another.
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server (TLS) did not start after {START_ATTEMPTS} attempts; last log:\n{last_log}");
    }

    /// Spawns the process and waits until it answers PING over TLS. On failure, returns
    /// its log.
    fn spawn(&mut self, auth: ClientAuth, cluster: bool) -> Result<(), String> {
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().expect("utf-8 temp dir").to_owned();
        let mut args: Vec<&str> = vec![
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.crt",
            "--tls-auth-clients",
            match auth {
                ClientAuth::Required => "yes",
                ClientAuth::Off => "no",
            },
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
            "--logfile",
            "server.log",
            "--daemonize",
            "no",
        ];
        if cluster {
            args.extend([
                "--tls-cluster",
                "yes",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    panic!("{NOT_INSTALLED}");
                }
                panic!("cannot start redis-server: {e}")
            });
        spawn_watchdog(child.id(), self.dir.path());
        self.child = Some(child);

        let until = Instant::now() + START_DEADLINE;
        loop {
            if self.try_cli(&["PING"]).is_ok_and(|pong| pong == "PONG") {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            if Instant::now() >= until {
                self.kill();
                return Err(format!(
                    "no PONG over TLS within {START_DEADLINE:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// `rediss://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// The TLS port it listens on (it has no plain port).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (certificates and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The `redis-cli` flags of a TLS client with the test CA and client certificate.
    fn tls_flags(&self) -> Vec<String> {
        let path = |name: &str| self.dir.path().join(name).display().to_string();
        vec![
            "--tls".into(),
            "--cacert".into(),
            path("ca.crt"),
            "--cert".into(),
            path("client.crt"),
            "--key".into(),
            path("client.key"),
        ]
    }

    /// Runs `redis-cli --tls … <args>`; panics on failure or an error reply.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| {
            panic!("redis-cli --tls {args:?} on port {} failed: {e}", self.port)
        })
    }

    /// Runs `redis-cli --tls … <args>`: the output, trimmed, or the error.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let flags = self.tls_flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        run_cli(self.port, &flags, args)
    }

    /// Runs `redis-cli --tls --insecure … <args>` (no check of the server's certificate,
    /// for a server that no longer shows the test CA's); panics on failure or an error.
    pub fn cli_insecure(&self, args: &[&str]) -> String {
        let mut flags = self.tls_flags();
        flags.push("--insecure".into());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        run_cli(self.port, &flags, args).unwrap_or_else(|e| {
            panic!(
                "redis-cli --tls --insecure {args:?} on port {} failed: {e}",
                self.port
            )
        })
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisTlsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for RedisTlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTlsServer")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Three TLS masters (`--tls-cluster yes`: the bus and the announced addresses are TLS,
/// there is no plain port), joined with `redis-cli --tls --cluster create`, ready when every
/// node reports `cluster_state:ok`.
pub struct RedisTlsCluster {
    nodes: Vec<RedisTlsServer>,
}

impl RedisTlsCluster {
    /// Starts and joins the cluster; its nodes do not ask for client certificates.
    pub fn start(ca: &TestCa) -> Self {
        let nodes: Vec<RedisTlsServer> = (0..3)
            .map(|_| RedisTlsServer::start_node(ca, ClientAuth::Off, true))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut args: Vec<String> = nodes[0].tls_flags();
        args.extend(["--cluster".into(), "create".into()]);
        args.extend(addrs);
        args.extend([
            "--cluster-replicas".into(),
            "0".into(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("[OK] All 16384 slots covered"),
            "redis-cli --tls --cluster create failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        for node in &cluster.nodes {
            wait_for(
                &format!("cluster_state:ok on TLS port {}", node.port()),
                START_DEADLINE,
                || {
                    let info = node.cli(&["CLUSTER", "INFO"]);
                    (info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3"))
                        .then_some(())
                },
            );
        }
        cluster
    }

    /// `rediss://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisTlsServer::url).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisTlsServer] {
        &self.nodes
    }
}

impl std::fmt::Debug for RedisTlsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.nodes).finish()
    }
}
