//! Connections (one server or a cluster), script invocation and command timeouts.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
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
            get: Script::new(include_str!("get.lua")),
            list_fields: Script::new(include_str!("list_fields.lua")),
        }
    }
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
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let fut = ConnectionManager::new_with_config(client, config);
        let manager = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| RedisStoreError::Timeout(timeout))??;
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

    /// Runs `script` on `key` with `args`: EVALSHA, and EVAL if the server answers `NOSCRIPT`.
    /// The whole exchange is bounded by `timeout`.
    pub(crate) async fn eval(
        &self,
        script: &Script,
        key: &[u8],
        args: &[&[u8]],
        timeout: Duration,
    ) -> Result<Value, RedisStoreError> {
        let build = |name: &str, body: &str| {
            let mut cmd = redis::cmd(name);
            cmd.arg(body).arg(1).arg(key);
            for a in args {
                cmd.arg(*a);
            }
            cmd
        };
        let fut = async {
            let evalsha = build("EVALSHA", &script.sha);
            let mut conn = self.clone();
            match conn.send(&evalsha).await {
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

    async fn send(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            Self::Single(c) => cmd.query_async(c).await,
            Self::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// The nodes a namespace-wide SCAN must visit: the server, or every cluster master.
    pub(crate) async fn scan_nodes(
        &self,
        timeout: Duration,
    ) -> Result<Vec<ScanNode>, RedisStoreError> {
        match self {
            Self::Single(_) => Ok(vec![ScanNode::Only]),
            Self::Cluster(_) => Ok(self
                .masters(timeout)
                .await?
                .into_iter()
                .map(|(host, port)| ScanNode::Master { host, port })
                .collect()),
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

    /// `(host, port)` of every master that serves slots, from `CLUSTER NODES`.
    async fn masters(&self, timeout: Duration) -> Result<Vec<(String, u16)>, RedisStoreError> {
        let Self::Cluster(c) = self else {
            return Ok(Vec::new());
        };
        let mut c = c.clone();
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
        let fut = c.route_command(redis::cmd("CLUSTER").arg("NODES").clone(), route);
        let reply = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| RedisStoreError::Timeout(timeout))??;
        let text: String = redis::from_redis_value(reply)
            .map_err(|e| RedisStoreError::Protocol(format!("CLUSTER NODES: {e}")))?;
        let mut out = Vec::new();
        for line in text.lines() {
            // <id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <state> <slots>...
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() < 9 || !parts[2].split(',').any(|f| f == "master") {
                continue;
            }
            let addr = parts[1].split('@').next().unwrap_or_default();
            let Some((host, port)) = addr.rsplit_once(':') else {
                continue;
            };
            let Ok(port) = port.parse() else { continue };
            out.push((host.to_owned(), port));
        }
        if out.is_empty() {
            return Err(RedisStoreError::Protocol(
                "CLUSTER NODES lists no master with slots".into(),
            ));
        }
        Ok(out)
    }
}

/// A node to SCAN during `flush`.
pub(crate) enum ScanNode {
    /// The only server of a standalone connection.
    Only,
    /// One cluster master, by address.
    Master { host: String, port: u16 },
}
