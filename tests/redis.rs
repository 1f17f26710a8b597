//! Black-box tests of the Redis tier against real `redis-server` processes.

mod support;

use support::{RedisCluster, RedisServer};

#[test]
fn harness_standalone_start_restart() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    assert_eq!(server.cli(&["PING"]), "PONG");
    assert_eq!(server.cli(&["SET", "k", "v"]), "OK");
    server.kill9();
    assert!(!server.is_up());
    server.restart();
    assert_eq!(
        server.cli(&["GET", "k"]),
        "",
        "no persistence: the key is gone"
    );
}

#[test]
fn harness_cluster_start_restart() {
    let Some(mut cluster) = RedisCluster::start(3) else {
        return;
    };
    assert_eq!(cluster.urls().len(), 3);
    let i = cluster.node_for_key("probe");
    assert_eq!(cluster.cli(i, &["SET", "probe", "1"]), "OK");
    cluster.restart_node(i);
    assert_eq!(cluster.cli(i, &["GET", "probe"]), "");
}
