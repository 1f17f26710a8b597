//! Connections (one server or a cluster), script invocation and command timeouts.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, Value};

use super::error::{ConfigError, RedisStoreError};

/// A Lua script and its SHA1, invoked with EVALSHA and re-sent with EVAL on `NOSCRIPT`
/// (scripts vanish on restart, failover and `SCRIPT FLUSH`).
pub(crate) struct Script {
    src: &'static str,
    sha: String,
}

impl Script {
    pub(crate) fn new(src: &'static str) -> Self {
        let sha = redis::Script::new(src).get_hash().to_owned();
        Self { src, sha }
    }
}

/// The scripts of the tier. Each declares exactly one key.
pub(crate) struct Scripts {
    pub(crate) get_or_lease: Script,
    pub(crate) save: Script,
    pub(crate) insert: Script,
    pub(crate) purge: Script,
    pub(crate) purge_field: Script,
    pub(crate) floors: Script,
    pub(crate) get: Script,
    pub(crate) list_fields: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            get_or_lease: Script::new(include_str!("get_or_lease.lua")),
            save: Script::new(include_str!("save.lua")),
            insert: Script::new(include_str!("insert.lua")),
            purge: Script::new(include_str!("purge.lua")),
            purge_field: Script::new(include_str!("purge_field.lua")),
            floors: Script::new(include_str!("floors.lua")),
            get: Script::new(include_str!("get.lua")),
            list_fields: Script::new(include_str!("list_fields.lua")),
        }
    }
}

/// How a single-server connection is made and re-made: each attempt bounded by `timeout`, two
/// retries with exponential backoff up to 500 ms.
fn manager_config(timeout: Duration) -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

/// One server (auto-reconnecting) or a cluster. Cloning shares the underlying connections.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    pub(crate) async fn connect(url: &str, timeout: Duration) -> Result<Self, RedisStoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| RedisStoreError::Config(ConfigError::url(url, &e)))?;
        let fut = ConnectionManager::new_with_config(client, manager_config(timeout));
        let manager = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| RedisStoreError::Timeout(timeout))??;
        Ok(Self::Single(manager))
    }

    /// A connection to one server that is made on first use, not now: the server may be down.
    /// redis-rs's `ConnectionManager` makes the connection when the first command needs it and,
    /// after a connection error, starts a new attempt (with its own retries and exponential
    /// backoff) in the background, so the store recovers on its own once the server is up.
    /// Only a URL that does not parse fails here. Must be called inside a tokio runtime.
    pub(crate) fn connect_lazy(url: &str, timeout: Duration) -> Result<Self, RedisStoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| RedisStoreError::Config(ConfigError::url(url, &e)))?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(RedisStoreError::Config(ConfigError::new(
                "RedisStore::connect_lazy must be called inside a tokio runtime",
            )));
        }
        let manager = ConnectionManager::new_lazy_with_config(client, manager_config(timeout))?;
        Ok(Self::Single(manager))
    }

    pub(crate) async fn connect_cluster(
        urls: &[&str],
        timeout: Duration,
    ) -> Result<Self, RedisStoreError> {
        for url in urls {
            // Parse each URL here, so that a typo is reported as such, naming the URL.
            redis::IntoConnectionInfo::into_connection_info(*url)
                .map_err(|e| RedisStoreError::Config(ConfigError::url(url, &e)))?;
        }
        let client = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(3)
            .build()?;
        let fut = client.get_async_connection();
        let conn = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| RedisStoreError::Timeout(timeout))??;
        Ok(Self::Cluster(conn))
    }

    /// Sends one command (routed by its key in cluster mode), bounded by `timeout`.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        timeout: Duration,
    ) -> Result<T, RedisStoreError> {
        let fut = async {
            match self.clone() {
                Self::Single(mut c) => cmd.query_async::<T>(&mut c).await,
                Self::Cluster(mut c) => cmd.query_async::<T>(&mut c).await,
            }
        };
        Ok(tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| RedisStoreError::Timeout(timeout))??)
    }

    /// Runs `script` on `keys` with `args`: EVALSHA, and EVAL if the server answers `NOSCRIPT`.
    /// The whole exchange is bounded by `timeout`.
    pub(crate) async fn eval(
        &self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
        timeout: Duration,
    ) -> Result<Value, RedisStoreError> {
        let build = |name: &str, body: &str| {
            let mut cmd = redis::cmd(name);
            cmd.arg(body).arg(keys.len());
            for k in keys {
                cmd.arg(*k);
            }
            for a in args {
                cmd.arg(*a);
            }
            cmd
        };
        let fut = async {
            let evalsha = build("EVALSHA", &script.sha);
            let mut conn = self.clone();
            let first = conn.send(&evalsha).await;
            // redis-rs sends READONLY on every cluster connection, and Redis serves a script not
            // flagged as writing (ours: no shebang, for Redis 6) on a replica of the slot's
            // master for such a connection, instead of answering MOVED. So after a failover
            // demoted the master redis-rs still routes to, every write script fails there with
            // READONLY (the replica refused its first write, so it changed nothing). Clearing
            // the flag makes that node answer MOVED, which redis-rs follows, refreshing its
            // slot map.
            let first = match first {
                Err(e) if e.code() == Some("READONLY") && conn.read_write().await => {
                    conn.send(&evalsha).await
                }
                other => other,
            };
            match first {
                Err(e) if e.code() == Some("NOSCRIPT") => {
                    conn.send(&build("EVAL", script.src)).await
                }
                other => other,
            }
        };
        Ok(tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| RedisStoreError::Timeout(timeout))??)
    }

    /// Sends `READWRITE` to every node of a cluster (see `eval`); `false` on a single server.
    async fn read_write(&mut self) -> bool {
        let Self::Cluster(c) = self else {
            return false;
        };
        let route = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None));
        let _ = c.route_command(redis::cmd("READWRITE"), route).await;
        true
    }

    async fn send(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            Self::Single(c) => cmd.query_async(c).await,
            Self::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// The nodes a namespace-wide SCAN must visit, in order, and a signature of the slot layout:
    /// two calls with equal signatures saw the same masters owning the same slots, with the same
    /// slots migrating. On a single server: the server and an empty signature.
    ///
    /// In cluster mode every healthy master is asked for its own `CLUSTER NODES` line (a node
    /// shows only its own migrations), and fails with a transient error naming the slots if a
    /// master that still owns slots is flagged failed (its keys live on in the replica that is
    /// about to take over: skipping it would leave them unflushed), if a listed master does not
    /// answer, or if some slot is claimed by no master.
    pub(crate) async fn scan_nodes(
        &self,
        timeout: Duration,
    ) -> Result<(Vec<ScanNode>, String), RedisStoreError> {
        let Self::Cluster(c) = self else {
            return Ok((vec![ScanNode::Only], String::new()));
        };
        let layout = self.masters(timeout).await?;
        if let Some(why) = layout.unflushable() {
            return Err(not_flushed(why));
        }
        let mut own = Vec::with_capacity(layout.masters.len());
        for (host, port) in &layout.masters {
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            });
            let mut c = c.clone();
            let fut = c.route_command(redis::cmd("CLUSTER").arg("NODES").clone(), route);
            let reply = match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    return Err(not_flushed(format!(
                        "master {host}:{port} did not answer CLUSTER NODES ({e})"
                    )));
                }
                Err(_) => {
                    return Err(not_flushed(format!(
                        "master {host}:{port} did not answer CLUSTER NODES within {timeout:?}"
                    )));
                }
            };
            let text: String = redis::from_redis_value(reply)
                .map_err(|e| RedisStoreError::Protocol(format!("CLUSTER NODES: {e}")))?;
            own.push(own_line(&text).ok_or_else(|| {
                RedisStoreError::Protocol(format!("CLUSTER NODES of {host}:{port}: no myself line"))
            })?);
        }
        let plan = plan_scan(&own);
        if let Some(why) = plan.uncovered {
            return Err(not_flushed(why));
        }
        Ok((plan.nodes, plan.signature))
    }

    /// Runs `script` on `key` at the node where a flush's SCAN found it (EVALSHA, EVAL on
    /// `NOSCRIPT`), bounded by `timeout`. In cluster mode the script is sent to that master by
    /// address, preceded by `ASKING` (so a master importing the key's slot runs it), not routed
    /// by the client's slot map, which lags behind a failover or migration. A master that no
    /// longer holds the key's slot answers `MOVED` or `ASK`: the key left it, and the flush finds
    /// it where it went (its layout check sees the change, and importing masters are scanned
    /// again), so that answer is not an error.
    pub(crate) async fn purge_at(
        &self,
        node: &ScanNode,
        script: &Script,
        key: &[u8],
        timeout: Duration,
    ) -> Result<(), RedisStoreError> {
        let (Self::Cluster(c), ScanNode::Master { host, port }) = (self, node) else {
            let args: [&[u8]; 2] = [b"", b""];
            return self.eval(script, &[key], &args, timeout).await.map(drop);
        };
        let build = |name: &str, body: &str| {
            let mut pipe = redis::pipe();
            pipe.cmd("ASKING");
            pipe.cmd(name).arg(body).arg(1).arg(key).arg("").arg("");
            pipe
        };
        let route = || SingleNodeRoutingInfo::ByAddress {
            host: host.clone(),
            port: *port,
        };
        let fut = async {
            let mut c = c.clone();
            let mut reply = c
                .route_pipeline(build("EVALSHA", &script.sha), 0, 2, route())
                .await?;
            if matches!(reply.get(1), Some(Value::ServerError(e)) if e.code() == "NOSCRIPT") {
                reply = c
                    .route_pipeline(build("EVAL", script.src), 0, 2, route())
                    .await?;
            }
            match reply.pop() {
                Some(Value::ServerError(e)) if matches!(e.code(), "MOVED" | "ASK") => Ok(()),
                Some(Value::ServerError(e)) => Err(redis::RedisError::from(e)),
                Some(_) => Ok(()),
                None => Err(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "no reply to a flush purge",
                ))),
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if matches!(e.code(), Some("MOVED" | "ASK")) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(RedisStoreError::Timeout(timeout)),
        }
    }

    /// One `SCAN cursor MATCH pattern COUNT 1000` on `node`: the next cursor and a batch of keys.
    pub(crate) async fn scan_step(
        &self,
        node: &ScanNode,
        cursor: u64,
        pattern: &str,
        timeout: Duration,
    ) -> Result<(u64, Vec<Vec<u8>>), RedisStoreError> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        let fut = async {
            match (self.clone(), node) {
                (Self::Single(mut c), _) => cmd.query_async::<Value>(&mut c).await,
                (Self::Cluster(mut c), ScanNode::Master { host, port }) => {
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    });
                    c.route_command(cmd.clone(), route).await
                }
                (Self::Cluster(_), ScanNode::Only) => Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "cluster SCAN needs a node address",
                ))),
            }
        };
        let reply = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| RedisStoreError::Timeout(timeout))??;
        redis::from_redis_value(reply).map_err(|e| RedisStoreError::Protocol(format!("SCAN: {e}")))
    }

    /// The address of the master that serves `key`'s hash slot, by `CLUSTER NODES` as one
    /// master sees it (it may be behind a migration or failover: a command sent there is then
    /// answered `MOVED`). `None` on a single server.
    pub(crate) async fn master_for_key(
        &self,
        key: &[u8],
        timeout: Duration,
    ) -> Result<Option<(String, u16)>, RedisStoreError> {
        let Some(text) = self.cluster_nodes(timeout).await? else {
            return Ok(None);
        };
        let slot = key_slot(key);
        slot_owner(&text, slot).map(Some).ok_or_else(|| {
            RedisStoreError::Protocol(format!("no healthy master serves slot {slot}"))
        })
    }

    /// `CLUSTER NODES` as one master sees it; `None` on a single server.
    async fn cluster_nodes(&self, timeout: Duration) -> Result<Option<String>, RedisStoreError> {
        let Self::Cluster(c) = self else {
            return Ok(None);
        };
        let mut c = c.clone();
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
        let fut = c.route_command(redis::cmd("CLUSTER").arg("NODES").clone(), route);
        let reply = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| RedisStoreError::Timeout(timeout))??;
        redis::from_redis_value(reply)
            .map(Some)
            .map_err(|e| RedisStoreError::Protocol(format!("CLUSTER NODES: {e}")))
    }

    /// Every healthy master, from `CLUSTER NODES` of a random master (asked up to three times:
    /// the one picked may be the one that just died).
    async fn masters(&self, timeout: Duration) -> Result<Layout, RedisStoreError> {
        let mut tries = 0;
        let text = loop {
            tries += 1;
            match self.cluster_nodes(timeout).await {
                Ok(Some(text)) => break text,
                Ok(None) => return Ok(Layout::default()),
                Err(e) if tries < 3 && e.is_transient() => continue,
                Err(e) => return Err(e),
            }
        };
        let layout = parse_cluster_nodes(&text);
        if layout.masters.is_empty() {
            return Err(RedisStoreError::Protocol(
                "CLUSTER NODES lists no healthy master with slots".into(),
            ));
        }
        Ok(layout)
    }
}

/// The masters to scan and who owns which slots, as one master sees it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Every master not flagged failed, with or without slots (a master without slots may be
    /// importing one).
    pub(crate) masters: Vec<(String, u16)>,
    /// `address slots...` of every master flagged `fail`, `fail?`, `noaddr` or `handshake` that
    /// still owns slots.
    pub(crate) failed_owners: Vec<String>,
    /// Sorted `address slots...` lines of every master, healthy or not; a slot being migrated
    /// shows as `[slot->-id]` / `[slot-<-id]` on the line of the node that was asked.
    pub(crate) signature: String,
}

impl Layout {
    /// Why a flush cannot cover every slot now: a failed master still owns slots.
    pub(crate) fn unflushable(&self) -> Option<String> {
        if self.failed_owners.is_empty() {
            return None;
        }
        Some(format!(
            "not flushed: slots of master(s) flagged failed, until a replica takes them over: {}",
            self.failed_owners.join("; ")
        ))
    }
}

/// The error of a flush that could not reach every slot: transient (retry once the cluster
/// settled), its detail naming what was not flushed.
pub(crate) fn not_flushed(why: String) -> RedisStoreError {
    RedisStoreError::Redis(redis::RedisError::from((
        redis::ErrorKind::ClusterConnectionNotFound,
        "flush did not reach every slot",
        why,
    )))
}

fn is_failed(flags: &[&str]) -> bool {
    flags
        .iter()
        .any(|f| matches!(*f, "fail" | "fail?" | "noaddr" | "handshake"))
}

/// Parses `CLUSTER NODES`. A master flagged `fail`, `fail?`, `noaddr` or `handshake` is left
/// out of the scan; if it still owns slots it is listed in `failed_owners` (its keys survive in
/// the replica that takes over, so the flush cannot succeed before the failover completes).
/// Once a replica took over, the old master owns no slots and is simply skipped.
pub(crate) fn parse_cluster_nodes(text: &str) -> Layout {
    let mut layout = Layout::default();
    let mut owners = Vec::new();
    for line in text.lines() {
        // <id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <state> <slots>...
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 8 {
            continue;
        }
        let flags: Vec<&str> = parts[2].split(',').collect();
        if !flags.contains(&"master") {
            continue;
        }
        let addr = parts[1].split('@').next().unwrap_or_default();
        let slots = parts[8..].join(" ");
        if !slots.is_empty() {
            owners.push(format!("{addr} {slots}"));
        }
        if is_failed(&flags) {
            if !slots.is_empty() {
                layout
                    .failed_owners
                    .push(format!("{addr} ({}) {slots}", parts[2]));
            }
            continue;
        }
        let Some((host, port)) = addr.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse() else { continue };
        layout.masters.push((host.to_owned(), port));
    }
    owners.sort();
    layout.signature = owners.join("\n");
    layout
}

/// The `myself` line of a node's `CLUSTER NODES`, as `address role slots...` (migrations of
/// the node's slots included).
pub(crate) fn own_line(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 8 || !parts[2].split(',').any(|f| f == "myself") {
            return None;
        }
        let addr = parts[1].split('@').next().unwrap_or_default();
        let role = if parts[2].split(',').any(|f| f == "master") {
            "master"
        } else {
            "replica"
        };
        let mut out = format!("{addr} {role}");
        for slot in &parts[8..] {
            out.push(' ');
            out.push_str(slot);
        }
        Some(out)
    })
}

/// What one flush pass scans, from every listed master's own line (see [`own_line`]).
#[derive(Default)]
pub(crate) struct Plan {
    /// Every master by its own account, then again every master importing a slot: a key that
    /// migrated to it after its first scan left a source that was scanned before its second.
    pub(crate) nodes: Vec<ScanNode>,
    /// The sorted own lines: equal before and after a pass means nothing moved between owners
    /// and no migration started or ended.
    pub(crate) signature: String,
    /// Slots that no master claims (a failover or migration in flux), if any.
    pub(crate) uncovered: Option<String>,
}

/// The scan plan of one flush pass from the masters' own lines (see [`Plan`]).
pub(crate) fn plan_scan(own: &[String]) -> Plan {
    let mut plan = Plan::default();
    let mut covered = vec![false; 16384];
    let mut importers = Vec::new();
    for line in own {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 2 || parts[1] != "master" {
            continue;
        }
        let Some((host, port)) = parts[0].rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        let node = || ScanNode::Master {
            host: host.to_owned(),
            port,
        };
        for range in &parts[2..] {
            if range.starts_with('[') {
                if range.contains("-<-") {
                    importers.push(node());
                }
                continue;
            }
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(lo), Ok(hi)) = (lo.parse::<usize>(), hi.parse::<usize>()) {
                for slot in covered.iter_mut().take(hi.min(16383) + 1).skip(lo) {
                    *slot = true;
                }
            }
        }
        plan.nodes.push(node());
    }
    // One entry per importing master, however many slots it imports.
    importers.dedup_by(|a, b| a == b);
    plan.nodes.extend(importers);
    let mut gaps = Vec::new();
    let mut slot = 0;
    while slot < covered.len() {
        if covered[slot] {
            slot += 1;
            continue;
        }
        let start = slot;
        while slot < covered.len() && !covered[slot] {
            slot += 1;
        }
        gaps.push(if slot - 1 == start {
            start.to_string()
        } else {
            format!("{start}-{}", slot - 1)
        });
    }
    if !gaps.is_empty() {
        plan.uncovered = Some(format!(
            "not flushed: no master claims slots {} (a failover or migration is in flux)",
            gaps.join(", ")
        ));
    }
    let mut sorted = own.to_vec();
    sorted.sort();
    plan.signature = sorted.join("\n");
    plan
}

/// The hash slot of a Redis Cluster key: CRC16 (XMODEM) of its hash tag (the part between the
/// first `{` and the next `}`, if not empty) or of the whole key, modulo 16384.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    let mut crc: u16 = 0;
    for &b in tagged.unwrap_or(key) {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// The healthy master whose slot ranges in `CLUSTER NODES` contain `slot` (a slot being
/// migrated away still belongs to its source until the migration ends).
pub(crate) fn slot_owner(text: &str, slot: u16) -> Option<(String, u16)> {
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 9 {
            continue;
        }
        let flags: Vec<&str> = parts[2].split(',').collect();
        if !flags.contains(&"master")
            || flags
                .iter()
                .any(|f| matches!(*f, "fail" | "fail?" | "noaddr" | "handshake"))
        {
            continue;
        }
        let serves = parts[8..].iter().any(|range| {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
        });
        if !serves {
            continue;
        }
        let addr = parts[1].split('@').next().unwrap_or_default();
        let (host, port) = addr.rsplit_once(':')?;
        return Some((host.to_owned(), port.parse().ok()?));
    }
    None
}

/// A node to SCAN during `flush`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScanNode {
    /// The only server of a standalone connection.
    Only,
    /// One cluster master, by address.
    Master { host: String, port: u16 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_skip_failed_masters_and_sign_the_layout() {
        let text = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001 master,fail - 0 0 2 connected 5461-10922
c 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
d 127.0.0.1:7003@17003 slave a 0 0 1 connected
e 127.0.0.1:7004@17004 master,fail? - 0 0 4 connected 100
f 127.0.0.1:7005@17005 master - 0 0 5 connected
";
        let layout = parse_cluster_nodes(text);
        assert_eq!(
            layout.masters,
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7002),
                ("127.0.0.1".to_owned(), 7005)
            ],
            "healthy masters, with or without slots (one may be importing)"
        );
        // Failed masters that still own slots: their keys live on in the replica that takes
        // over, so the flush cannot succeed yet.
        assert_eq!(
            layout.failed_owners,
            vec![
                "127.0.0.1:7001 (master,fail) 5461-10922".to_owned(),
                "127.0.0.1:7004 (master,fail?) 100".to_owned()
            ]
        );
        assert!(layout.unflushable().unwrap().contains("127.0.0.1:7001"));
        // Once the replica took over, the old master owns no slots and is just skipped.
        let taken_over = text.replace("connected 5461-10922", "connected").replace(
            "master,fail? - 0 0 4 connected 100",
            "master - 0 0 4 connected 100",
        );
        assert_eq!(parse_cluster_nodes(&taken_over).unflushable(), None);
        // A slot in migration changes the signature; so does a failover.
        let migrating = text.replace("0-5460", "0-5460 [5460->-c]");
        assert_ne!(parse_cluster_nodes(&migrating).signature, layout.signature);
        let failed_over = text.replace("master,fail -", "slave c");
        assert_ne!(
            parse_cluster_nodes(&failed_over).signature,
            layout.signature
        );
        assert_eq!(parse_cluster_nodes(text), layout);
    }

    #[test]
    fn scan_plans_rescan_importers_and_find_unclaimed_slots() {
        let a = "a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5460->-c]";
        let c = "c 127.0.0.1:7002@17002 myself,master - 0 0 3 connected 5461-16383 [5460-<-a]";
        let own: Vec<String> = [a, c].iter().map(|t| own_line(t).unwrap()).collect();
        assert_eq!(
            own[0], "127.0.0.1:7000 master 0-5460 [5460->-c]",
            "the node's own line, migrations included"
        );
        let master = |port| ScanNode::Master {
            host: "127.0.0.1".into(),
            port,
        };
        let plan = plan_scan(&own);
        assert_eq!(
            plan.nodes,
            vec![master(7000), master(7002), master(7002)],
            "the importing master is scanned again after its source"
        );
        assert_eq!(plan.uncovered, None);
        // Once the migration ended, the signature differs (a pass must be repeated).
        let settled: Vec<String> = [
            "a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5459",
            "c 127.0.0.1:7002@17002 myself,master - 0 0 3 connected 5460-16383",
        ]
        .iter()
        .map(|t| own_line(t).unwrap())
        .collect();
        let settled_plan = plan_scan(&settled);
        assert_ne!(settled_plan.signature, plan.signature);
        assert_eq!(settled_plan.nodes, vec![master(7000), master(7002)]);
        // A master demoted to replica claims nothing: its slots are unclaimed, named.
        let demoted = own_line("a 127.0.0.1:7000@17000 myself,slave c 0 0 1 connected").unwrap();
        let plan = plan_scan(&[demoted, own[1].clone()]);
        assert_eq!(plan.nodes, vec![master(7002), master(7002)]);
        assert!(plan.uncovered.unwrap().contains("slots 0-5460"));
    }

    #[test]
    fn key_slots_follow_hash_tags_and_owners_skip_failed_masters() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{ns}"), 9937);
        assert_eq!(key_slot(b"leasecache:{ns}:seq"), 9937);
        assert_eq!(key_slot(b"leasecache:{ns}:coherence"), 9937);
        assert_eq!(key_slot(b"a{}b"), 13694, "an empty tag: the whole key");
        let text = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5460->-c]
b 127.0.0.1:7001@17001 master,fail - 0 0 2 connected 5461-10922
c 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16382 16383
";
        assert_eq!(slot_owner(text, 5460), Some(("127.0.0.1".into(), 7000)));
        assert_eq!(slot_owner(text, 16383), Some(("127.0.0.1".into(), 7002)));
        assert_eq!(slot_owner(text, 6000), None, "its master failed");
    }
}
