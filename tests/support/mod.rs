//! Test harness shared by the Redis-backed integration suites (`tests/redis.rs`,
//! `tests/tiered.rs`): throwaway `redis-server` processes on free loopback ports, each in its own
//! temporary directory, stopped and removed on drop.
//!
//! Never a fixed port, never the machine's own Redis. When `redis-server` is not installed,
//! [`RedisServer::start`] and [`RedisCluster::start`] print a loud skip to stderr and return
//! `None`, unless `LEASECACHE_REQUIRE_REDIS=1` (set by `.ci/run`), in which case they panic.
//!
//! Readiness is always awaited by polling `PING` (or `CLUSTER INFO`) with bounded retries.
//!
//! `LEASECACHE_REDIS_SERVER` / `LEASECACHE_REDIS_CLI` name other binaries (for example
//! `valkey-server` / `valkey-cli`); the defaults are `redis-server` / `redis-cli`.
#![allow(dead_code)]

pub mod process;
pub mod proxy;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any server is given to come up (or a cluster to converge) before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between readiness polls.
const POLL: Duration = Duration::from_millis(20);

/// The server binary (`LEASECACHE_REDIS_SERVER`, default `redis-server`).
pub fn server_bin() -> String {
    std::env::var("LEASECACHE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// The CLI binary (`LEASECACHE_REDIS_CLI`, default `redis-cli`).
pub fn cli_bin() -> String {
    std::env::var("LEASECACHE_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

/// Whether the environment demands real Redis tests (CI).
pub fn redis_required() -> bool {
    std::env::var("LEASECACHE_REQUIRE_REDIS").is_ok_and(|v| v == "1")
}

/// Whether `redis-server` and `redis-cli` can be run.
pub fn redis_installed() -> bool {
    let ok = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    ok(&server_bin()) && ok(&cli_bin())
}

/// `true` if the test may proceed; prints a loud skip (or panics under
/// `LEASECACHE_REQUIRE_REDIS=1`) otherwise.
fn check_installed(what: &str) -> bool {
    if redis_installed() {
        return true;
    }
    if redis_required() {
        panic!("LEASECACHE_REQUIRE_REDIS=1 but redis-server/redis-cli are not installed ({what})");
    }
    eprintln!();
    eprintln!("************************************************************************");
    eprintln!("*** SKIPPED ({what}): redis-server / redis-cli not installed.");
    eprintln!("*** Set LEASECACHE_REQUIRE_REDIS=1 to make this a failure.");
    eprintln!("************************************************************************");
    false
}

/// Whether Redis is installed, for a test that must decide before it starts a server: `false`
/// after a loud skip message; panics if Redis is required (`LEASECACHE_REQUIRE_REDIS=1`).
pub fn redis_available(what: &str) -> bool {
    check_installed(what)
}

/// `anyhow`'s `{:#}` report of `err` (every layer of the `source()` chain, joined by ": "),
/// after asserting that each layer is printed once: the top layer's text and its cause's text
/// occur once each, and no ": "-separated part repeats.
pub fn report_with_each_cause_once<E>(err: E) -> String
where
    E: std::error::Error + Send + Sync + 'static,
{
    let top = err.to_string();
    let cause = std::error::Error::source(&err)
        .map(ToString::to_string)
        .unwrap_or_default();
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert_eq!(chain.matches(top.as_str()).count(), 1, "{chain}");
    if !cause.is_empty() {
        assert_eq!(chain.matches(cause.as_str()).count(), 1, "{chain}");
    }
    let parts: Vec<&str> = chain.split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(p),
            "{p:?} printed twice in {chain}"
        );
    }
    chain
}

/// A loopback port that was free a moment ago (bind port 0, read it, drop the listener).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Sends `PING` over a raw connection; `true` on `+PONG`.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// Runs `redis-cli -h 127.0.0.1 -p <port> <args>` and returns its trimmed stdout.
pub fn cli_at(port: u16, args: &[&str]) -> String {
    let out = Command::new(cli_bin())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `cond` every [`POLL`] until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// One `redis-server` process bound to 127.0.0.1 on a free port, with its own working directory.
struct Node {
    port: u16,
    /// Cluster bus port, when cluster mode is on.
    bus_port: Option<u16>,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))?;
        let mut cmd = Command::new(server_bin());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
        if let Some(bus) = self.bus_port {
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "2000"])
                .arg("--cluster-port")
                .arg(bus.to_string());
        }
        cmd.args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    /// Spawns and waits for `PING`; `false` if the process died or never answered.
    fn spawn_and_wait(&mut self) -> bool {
        if self.spawn().is_err() {
            return false;
        }
        let port = self.port;
        let ready = wait_until(READY_TIMEOUT, || {
            if let Some(child) = self.child.as_mut() {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return true; // exited: stop polling, reported below
                }
            }
            ping(port)
        });
        ready && ping(port)
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = self.child.as_ref() {
            let status = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.id().to_string())
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -{sig} failed");
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts a node in `dir`, retrying with fresh ports if the chosen one was taken meanwhile.
fn start_node(dir: PathBuf, cluster: bool, extra: &[&str]) -> Node {
    let mut last_log = String::new();
    for _ in 0..5 {
        let mut node = Node {
            port: free_port(),
            bus_port: cluster.then(free_port),
            dir: dir.clone(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        if node.bus_port == Some(node.port) {
            continue;
        }
        if node.spawn_and_wait() {
            return node;
        }
        last_log = node.log();
        node.kill9();
    }
    panic!("redis-server did not come up after 5 attempts; last log:\n{last_log}");
}

/// A throwaway standalone `redis-server`. Dropping it kills the process and removes its directory.
pub struct RedisServer {
    node: Node,
    // Declared last: dropped after the node is killed.
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server with default settings (no persistence: a restart loses every key).
    /// `None` (after a loud skip message) if Redis is not installed and not required.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments, e.g. `&["--maxmemory", "2mb"]`.
    pub fn start_with(extra: &[&str]) -> Option<Self> {
        if !check_installed("RedisServer::start") {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("leasecache-redis-")
            .tempdir()
            .expect("create temp dir");
        let node = start_node(dir.path().to_path_buf(), false, extra);
        Some(Self { node, _dir: dir })
    }

    /// Starts a server on `port`: a port reserved with [`free_port`] that a client was pointed
    /// at before any server listened there. Panics if it does not come up (the port was taken
    /// meanwhile). `None` (after a loud skip message) if Redis is not installed and not required.
    pub fn start_on(port: u16) -> Option<Self> {
        if !check_installed("RedisServer::start_on") {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("leasecache-redis-")
            .tempdir()
            .expect("create temp dir");
        let mut node = Node {
            port,
            bus_port: None,
            dir: dir.path().to_path_buf(),
            extra: Vec::new(),
            child: None,
        };
        if !node.spawn_and_wait() {
            panic!(
                "redis-server did not come up on port {port}; log:\n{}",
                node.log()
            );
        }
        Some(Self { node, _dir: dir })
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.node.port)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// The server's working directory (also holds `redis.log`).
    pub fn dir(&self) -> &Path {
        &self.node.dir
    }

    /// Whether the server answers `PING` right now.
    pub fn is_up(&self) -> bool {
        ping(self.node.port)
    }

    /// Kills the server with SIGKILL (no shutdown, no save) and reaps it.
    pub fn kill9(&mut self) {
        self.node.kill9();
    }

    /// Freezes the server with SIGSTOP: connections stay open but nothing is answered (a hung
    /// server). [`resume`](Self::resume) thaws it; drop also kills a frozen server.
    pub fn pause(&self) {
        self.node.signal("STOP");
    }

    /// Thaws a server frozen by [`pause`](Self::pause) (SIGCONT).
    pub fn resume(&self) {
        self.node.signal("CONT");
    }

    /// Kills the server if it runs, then starts it again on the same port and directory and waits
    /// for `PING`. Without persistence (the default) every key is gone afterwards.
    pub fn restart(&mut self) {
        self.node.kill9();
        // The port was ours a moment ago; retry briefly in case the kernel still holds it.
        let mut ok = false;
        for _ in 0..50 {
            if self.node.spawn_and_wait() {
                ok = true;
                break;
            }
            self.node.kill9();
            std::thread::sleep(POLL);
        }
        assert!(
            ok,
            "redis-server did not restart; log:\n{}",
            self.node.log()
        );
    }

    /// Runs `redis-cli` against this server and returns its trimmed stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        cli_at(self.node.port, args)
    }

    /// The server log so far (for assertion messages).
    pub fn log(&self) -> String {
        self.node.log()
    }
}

/// A throwaway Redis Cluster of `n` masters (no replicas), created with
/// `redis-cli --cluster create`. Dropping it kills every node and removes their directories.
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// With [`start_with_bus_proxies`](Self::start_with_bus_proxies): node `i`'s cluster bus,
    /// as every other node reaches it.
    bus_proxies: Vec<proxy::Proxy>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `n` (>= 3) cluster-enabled nodes, joins them into one cluster covering all 16384
    /// slots and waits until every node reports `cluster_state:ok`. `None` (after a loud skip
    /// message) if Redis is not installed and not required.
    pub fn start(n: usize) -> Option<Self> {
        Self::start_replicated(n, 0, &[])
    }

    /// Starts `masters` (>= 3) masters with `replicas` replicas each (every node started with
    /// the `extra` server arguments), joined by `redis-cli --cluster create --cluster-replicas`;
    /// waits until every node reports `cluster_state:ok` and every replica's link to its master
    /// is up. `None` (after a loud skip message) if Redis is not installed and not required.
    pub fn start_replicated(masters: usize, replicas: usize, extra: &[&str]) -> Option<Self> {
        Self::create(masters, replicas, extra, false)
    }

    /// Starts `masters` masters (no replicas) whose cluster buses are reached through a
    /// [`Proxy`](proxy::Proxy) each: every node announces its proxy's port as its bus port
    /// (`cluster-announce-bus-port`), so [`bus_proxy`](Self::bus_proxy)`(i).black_hole()`
    /// silently drops every bus message sent to node `i` (its own messages to the others still
    /// go through: a one-way partition, as a misconfigured firewall makes).
    pub fn start_with_bus_proxies(masters: usize, extra: &[&str]) -> Option<Self> {
        Self::create(masters, 0, extra, true)
    }

    /// The proxy in front of node `i`'s cluster bus (see
    /// [`start_with_bus_proxies`](Self::start_with_bus_proxies)).
    pub fn bus_proxy(&self, i: usize) -> &proxy::Proxy {
        &self.bus_proxies[i]
    }

    fn create(masters: usize, replicas: usize, extra: &[&str], proxied: bool) -> Option<Self> {
        let n = masters * (1 + replicas);
        assert!(
            masters >= 3,
            "redis-cli --cluster create needs at least 3 masters"
        );
        if !check_installed("RedisCluster::start") {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("leasecache-cluster-")
            .tempdir()
            .expect("create temp dir");
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let d = dir.path().join(format!("node{i}"));
                std::fs::create_dir_all(&d).expect("create node dir");
                start_node(d, true, extra)
            })
            .collect();
        let mut bus_proxies = Vec::new();
        if proxied {
            for node in &nodes {
                let bus = node.bus_port.expect("a cluster node has a bus port");
                let proxy = proxy::Proxy::start(bus);
                let port = proxy.port().to_string();
                let set = cli_at(
                    node.port,
                    &["CONFIG", "SET", "cluster-announce-bus-port", &port],
                );
                assert_eq!(set, "OK", "announce the proxied bus port");
                bus_proxies.push(proxy);
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(cli_bin())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self {
            nodes,
            bus_proxies,
            _dir: dir,
        };
        cluster.wait_ok();
        let synced = wait_until(READY_TIMEOUT, || {
            cluster.nodes.iter().all(|node| {
                let info = cli_at(node.port, &["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        });
        assert!(synced, "replicas did not sync with their masters");
        Some(cluster)
    }

    /// Whether node `i` is a master now.
    pub fn is_master(&self, i: usize) -> bool {
        cli_at(self.nodes[i].port, &["ROLE"]).starts_with("master")
    }

    /// The index of a replica of node `i` (a master), by `CLUSTER NODES` as node `i` sees it.
    pub fn replica_of(&self, i: usize) -> Option<usize> {
        let id = cli_at(self.nodes[i].port, &["CLUSTER", "MYID"]);
        let nodes = cli_at(self.nodes[i].port, &["CLUSTER", "NODES"]);
        let line = nodes.lines().find(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            parts.len() > 3 && parts[2].contains("slave") && parts[3] == id
        })?;
        let port: u16 = line
            .split_whitespace()
            .nth(1)?
            .split('@')
            .next()?
            .rsplit_once(':')?
            .1
            .parse()
            .ok()?;
        self.nodes.iter().position(|n| n.port == port)
    }

    /// Waits until every node reports `cluster_state:ok` and knows every other node.
    pub fn wait_ok(&self) {
        let n = self.nodes.len();
        let ok = wait_until(READY_TIMEOUT, || {
            self.nodes.iter().all(|node| {
                let info = cli_at(node.port, &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{n}"))
                    && info.contains("cluster_slots_ok:16384")
            })
        });
        assert!(ok, "cluster did not converge to cluster_state:ok");
    }

    /// `redis://127.0.0.1:<port>/` for every node, in start order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// Every node's port, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The index of the node that serves `key`'s hash slot.
    pub fn node_for_key(&self, key: &str) -> usize {
        // Asked of the first node that answers (one may have been killed).
        let slot: u16 = self
            .nodes
            .iter()
            .find_map(|n| cli_at(n.port, &["CLUSTER", "KEYSLOT", key]).parse().ok())
            .expect("CLUSTER KEYSLOT reply");
        let me_of = |port: u16| cli_at(port, &["CLUSTER", "MYID"]);
        for (i, node) in self.nodes.iter().enumerate() {
            let id = me_of(node.port);
            // CLUSTER NODES line: <id> <ip:port@bus> <flags> ... <slot ranges>
            let nodes = cli_at(node.port, &["CLUSTER", "NODES"]);
            for line in nodes.lines() {
                let mut parts = line.split_whitespace();
                if parts.next() != Some(id.as_str()) {
                    continue;
                }
                for range in parts.skip(7) {
                    let (lo, hi) = match range.split_once('-') {
                        Some((lo, hi)) => (lo.parse().ok(), hi.parse().ok()),
                        None => (range.parse().ok(), range.parse().ok()),
                    };
                    if let (Some(lo), Some(hi)) = (lo, hi) {
                        if (lo..=hi).contains(&slot) {
                            return i;
                        }
                    }
                }
            }
        }
        panic!("no node serves slot {slot}");
    }

    /// Runs `redis-cli` against node `i` (no `-c`: no redirection following).
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        cli_at(self.nodes[i].port, args)
    }

    /// Starts moving hash slot `slot` (a number, as text) from node `from` to node `to` and
    /// moves every key of it (`SETSLOT IMPORTING` / `MIGRATING`, `MIGRATE` in batches of 100),
    /// leaving the slot migrating: [`end_migration`](Self::end_migration) hands it over.
    pub fn start_migration(&self, slot: &str, from: usize, to: usize) {
        let from_id = self.cli(from, &["CLUSTER", "MYID"]);
        let to_id = self.cli(to, &["CLUSTER", "MYID"]);
        let to_port = self.nodes[to].port.to_string();
        let importing = self.cli(to, &["CLUSTER", "SETSLOT", slot, "IMPORTING", &from_id]);
        assert_eq!(importing, "OK", "SETSLOT IMPORTING");
        let migrating = self.cli(from, &["CLUSTER", "SETSLOT", slot, "MIGRATING", &to_id]);
        assert_eq!(migrating, "OK", "SETSLOT MIGRATING");
        loop {
            let keys = self.cli(from, &["CLUSTER", "GETKEYSINSLOT", slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            let out = self.cli(from, &args);
            assert!(out == "OK" || out == "NOKEY", "MIGRATE: {out}");
        }
    }

    /// Ends a migration begun by [`start_migration`](Self::start_migration): `SETSLOT slot NODE`
    /// of node `to` on every node, then waits until the cluster is healthy.
    pub fn end_migration(&self, slot: &str, to: usize) {
        let to_id = self.cli(to, &["CLUSTER", "MYID"]);
        for node in 0..self.nodes.len() {
            let out = self.cli(node, &["CLUSTER", "SETSLOT", slot, "NODE", &to_id]);
            assert_eq!(out, "OK", "SETSLOT NODE on node {node}");
        }
        self.wait_ok();
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].kill9();
    }

    /// Kills node `i` (if it runs), starts it again on the same ports and directory (its
    /// `nodes.conf` keeps its identity and slots; its keys are gone), and waits until the whole
    /// cluster reports `cluster_state:ok` again.
    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].kill9();
        let mut ok = false;
        for _ in 0..50 {
            if self.nodes[i].spawn_and_wait() {
                ok = true;
                break;
            }
            self.nodes[i].kill9();
            std::thread::sleep(POLL);
        }
        assert!(
            ok,
            "cluster node {i} did not restart; log:\n{}",
            self.nodes[i].log()
        );
        self.wait_ok();
    }
}

/// How long one [`wait_for`] of the async suites may take before the test fails.
pub const ASYNC_WAIT: Duration = Duration::from_secs(15);

/// Runs `test` on a multi-threaded tokio runtime of `workers` threads; fails the test if it runs
/// longer than `limit`.
pub fn run_tokio<F>(workers: usize, limit: Duration, test: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        tokio::time::timeout(limit, test)
            .await
            .expect("test exceeded its time limit");
    });
}

/// Polls `cond` every millisecond (yielding to the runtime) until it holds; panics naming `what`
/// after [`ASYNC_WAIT`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + ASYNC_WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
