//! A throwaway `redis-server` for a bench: started on a free loopback port with no
//! persistence, killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound, read and released).
pub fn free_port() -> Option<u16> {
    Some(
        std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port(),
    )
}

/// A `redis-server` child process.
pub struct BenchRedis {
    child: Child,
    /// Its loopback port.
    pub port: u16,
}

impl BenchRedis {
    /// Starts one, or `None` when `redis-server` is not installed (the caller skips its
    /// Redis benches and says so).
    pub fn start() -> Option<Self> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Self { child, port })
    }

    /// One under `valgrind --tool=callgrind`, counting instructions only inside `FCALL`
    /// (`--toggle-collect=fcallCommand`), its dumps written to `dir` as `out.<pid>.<n>`;
    /// `None` without valgrind. Slow to start and about 50 times slower to run: for counts,
    /// never times.
    pub fn start_under_callgrind(dir: &std::path::Path) -> Option<Self> {
        let port = free_port()?;
        let child = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg("--collect-atstart=no")
            .arg("--toggle-collect=fcallCommand")
            .arg(format!("--callgrind-out-file={}/out.%p", dir.display()))
            .args([
                "redis-server",
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || server.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    /// The server's process id (for `callgrind_control`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three `--cluster-enabled yes` masters (no replicas) on free loopback ports, each in its
/// own temporary directory (for `nodes.conf`), joined with `redis-cli --cluster create`:
/// the 16,384 slots split in three. Killed on drop.
pub struct BenchCluster {
    nodes: Vec<Child>,
    /// The masters' loopback ports.
    pub ports: Vec<u16>,
    _dirs: Vec<tempfile::TempDir>,
}

impl BenchCluster {
    /// Starts and joins the cluster, or `None` when `redis-server` or `redis-cli` is not
    /// installed. Panics when installed servers do not form a cluster.
    pub fn start() -> Option<Self> {
        let mut cluster = Self {
            nodes: Vec::new(),
            ports: Vec::new(),
            _dirs: Vec::new(),
        };
        for _ in 0..3 {
            let port = port_with_free_bus();
            let dir = tempfile::Builder::new()
                .prefix("tower-credits-bench-cluster-")
                .tempdir()
                .expect("a temporary directory for a cluster node");
            let path = dir.path().to_str().expect("a UTF-8 temporary path");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir", path])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .stdout(Stdio::null())
                .spawn()
                .ok()?;
            cluster.nodes.push(child);
            cluster.ports.push(port);
            cluster._dirs.push(dir);
        }
        for &port in &cluster.ports {
            wait_until(&format!("node {port} answers"), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("[OK] All 16384 slots covered"),
            "redis-cli --cluster create failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for &port in &cluster.ports {
            wait_until(&format!("cluster_state:ok on node {port}"), || {
                Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
                    .output()
                    .map(|o| {
                        let info = String::from_utf8_lossy(&o.stdout);
                        info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
                    })
                    .unwrap_or(false)
            });
        }
        Some(cluster)
    }

    /// `redis://127.0.0.1:<port>` of every master.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free loopback port whose cluster bus port (`port + 10000`) is free too.
fn port_with_free_bus() -> u16 {
    for _ in 0..100 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("its address").port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port with a free cluster bus port");
}

/// Polls `ready` every 20 ms for up to 20 s; panics with `what` past that.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}
