//! Runs the router of `examples/service.rs` in-process, over real HTTP on a loopback port, against
//! the machine's PostgreSQL (a temporary table of the service's own connection) and a Redis of
//! its own (`support`): GET, PUT, GET shows the new row.
//!
//! PostgreSQL: `LEASECACHE_PG_URL` (default `postgresql://postgres@127.0.0.1:5432/test`). When it
//! cannot be reached the test prints a loud skip, or fails if `LEASECACHE_REQUIRE_PG=1`.

mod support;

#[path = "../examples/service.rs"]
#[allow(dead_code)]
mod service;

use service::{App, User};
use std::sync::Arc;
use std::time::Duration;
use support::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The whole test's time limit.
const LIMIT: Duration = Duration::from_secs(60);

/// One HTTP/1.1 request with `Connection: close`; returns the status code and the body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

fn user(body: &str) -> User {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a user ({e}): {body}"))
}

#[test]
fn get_put_get_serves_the_updated_row() {
    let pg_url = std::env::var("LEASECACHE_PG_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned());
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        tokio::time::timeout(LIMIT, scenario(&pg_url, &redis.url()))
            .await
            .expect("test exceeded its time limit");
    });
}

async fn scenario(pg_url: &str, redis_url: &str) {
    let db = match service::connect_db(pg_url).await {
        Ok(db) => db,
        Err(e) if std::env::var("LEASECACHE_REQUIRE_PG").as_deref() != Ok("1") => {
            eprintln!(
                "\n*** SKIPPED get_put_get_serves_the_updated_row: no PostgreSQL at {pg_url} ({e}); \
                 set LEASECACHE_PG_URL, or LEASECACHE_REQUIRE_PG=1 to fail instead ***\n"
            );
            return;
        }
        Err(e) => panic!("LEASECACHE_REQUIRE_PG=1 but PostgreSQL at {pg_url} is unreachable: {e}"),
    };
    // A temporary table lives only in this connection: nothing is left behind, and concurrent
    // runs cannot collide.
    let table = "leasecache_service_test_users";
    service::create_table(&db, table, true)
        .await
        .expect("create the temporary table");
    let cache = service::connect_cache(redis_url, "service-test")
        .await
        .expect("connect the cache");
    let app = Arc::new(App {
        db,
        cache,
        table: table.to_owned(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let server =
        tokio::spawn(axum::serve(listener, service::router(Arc::clone(&app))).into_future());

    let (status, body) = http(addr, "GET", "/users/1", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(user(&body).name, "Ada Lovelace");
    assert_eq!(
        app.cache.stats().loads,
        1,
        "the first GET read the database"
    );

    // Read-through: the second GET is served by a cache tier, not the database.
    let (status, body) = http(addr, "GET", "/users/1", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(user(&body).name, "Ada Lovelace");
    assert_eq!(app.cache.stats().loads, 1, "the second GET was a cache hit");

    let update = r#"{"name":"Grace Hopper","email":"grace@example.com"}"#;
    let (status, body) = http(addr, "PUT", "/users/1", update).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(user(&body).name, "Grace Hopper");

    // The PUT purged both tiers: the next GET reads the new row from the database.
    let (status, body) = http(addr, "GET", "/users/1", "").await;
    assert_eq!(status, 200, "{body}");
    let row = user(&body);
    assert_eq!(
        (row.name.as_str(), row.email.as_str()),
        ("Grace Hopper", "grace@example.com")
    );
    assert_eq!(app.cache.stats().loads, 2);

    let (status, _) = http(addr, "GET", "/users/999", "").await;
    assert_eq!(status, 404);
    let (status, _) = http(addr, "PUT", "/users/999", update).await;
    assert_eq!(status, 404);

    server.abort();
}
