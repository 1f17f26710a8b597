//! A small HTTP service (axum) over PostgreSQL with a `TieredCache` (L1 + Redis) in front:
//! read-through on `GET /users/{id}`, update the row then purge on `PUT /users/{id}`.
//!
//! It needs a PostgreSQL server and a Redis server:
//!
//! ```text
//! # defaults: PostgreSQL at 127.0.0.1:5432 (user postgres, database test), Redis at 127.0.0.1:6379
//! cargo run --example service --features redis
//!
//! curl -s localhost:3000/users/1
//! curl -s -X PUT localhost:3000/users/1 -H 'content-type: application/json' \
//!      -d '{"name":"Grace Hopper","email":"grace@example.com"}'
//! curl -s localhost:3000/users/1          # the new row: the PUT purged both tiers
//! curl -s localhost:3000/stats
//! ```
//!
//! Environment (all optional):
//! - `LEASECACHE_PG_URL`: a tokio-postgres connection string
//!   (default `postgresql://postgres@127.0.0.1:5432/test`);
//! - `LEASECACHE_REDIS_URL` (default `redis://127.0.0.1:6379/`);
//! - `LEASECACHE_LISTEN` (default `127.0.0.1:3000`).
//!
//! It creates the table `leasecache_example_users` if it does not exist, with three rows, and
//! caches under the Redis namespace `example-service`. When PostgreSQL or Redis cannot be
//! reached it says which and exits with status 1.
//!
//! Every process running this serves coherent data: a PUT in one purges Redis, its own L1 and
//! (through the invalidation feed) every other process's L1; a GET that raced the PUT cannot
//! save the row it read before the update (the lease rejects it).
//!
//! `tests/service.rs` runs this same router in-process against a temporary table.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use leasecache::Cache;
use leasecache::redis::{RedisOptions, RedisStore};
use leasecache::tiered::{TieredCache, TieredError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_PG: &str = "postgresql://postgres@127.0.0.1:5432/test";
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379/";
const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
const TABLE: &str = "leasecache_example_users";
/// How long connecting to either server may take before the service gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A row of the users table, as cached and as served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Contact address.
    pub email: String,
}

/// The body of `PUT /users/{id}`.
#[derive(Debug, Deserialize)]
pub struct UserUpdate {
    /// The new name.
    pub name: String,
    /// The new address.
    pub email: String,
}

/// What every handler shares.
pub struct App {
    /// The source of truth.
    pub db: tokio_postgres::Client,
    /// L1 + Redis in front of it, keyed `user:{id}`.
    pub cache: TieredCache<String, User>,
    /// The table's name (a fixed name, or a temporary table in the test).
    pub table: String,
}

/// Why a request failed.
#[derive(Debug)]
pub enum AppError {
    /// No row with this id (404).
    NotFound,
    /// The database failed (500).
    Db(tokio_postgres::Error),
    /// The row was updated but the purge failed for a reason other than Redis being
    /// unreachable (500).
    Cache(TieredError),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound => (StatusCode::NOT_FOUND, "no such user\n").into_response(),
            Self::Db(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("database error: {e}\n"),
            )
                .into_response(),
            Self::Cache(e) => {
                let cause = std::error::Error::source(&e).map(|c| format!(": {c}"));
                let body = format!("cache error: {e}{}\n", cause.unwrap_or_default());
                (StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
            }
        }
    }
}

fn cache_key(id: i64) -> String {
    format!("user:{id}")
}

/// The routes: `GET /users/{id}`, `PUT /users/{id}`, `GET /stats`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/users/{id}", get(get_user).put(put_user))
        .route("/stats", get(stats))
        .with_state(app)
}

/// Read-through: the L1, else Redis, else the database (saved to both tiers under leases, so a
/// row read before a concurrent update is never cached after that update's purge).
async fn get_user(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
) -> Result<Json<User>, AppError> {
    let user = app
        .cache
        .get_or_load(cache_key(id), |_| async {
            let sql = format!("SELECT id, name, email FROM {} WHERE id = $1", app.table);
            let row = app.db.query_opt(&sql, &[&id]).await.map_err(AppError::Db)?;
            let row = row.ok_or(AppError::NotFound)?;
            Ok(User {
                id: row.get(0),
                name: row.get(1),
                email: row.get(2),
            })
        })
        .await?;
    Ok(Json(user))
}

/// Update the row, then purge the key: Redis first, then this L1, then every other process's L1.
async fn put_user(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
    Json(update): Json<UserUpdate>,
) -> Result<Response, AppError> {
    let sql = format!(
        "UPDATE {} SET name = $2, email = $3 WHERE id = $1 RETURNING id, name, email",
        app.table
    );
    let row = app
        .db
        .query_opt(&sql, &[&id, &update.name, &update.email])
        .await
        .map_err(AppError::Db)?
        .ok_or(AppError::NotFound)?;
    let user = User {
        id: row.get(0),
        name: row.get(1),
        email: row.get(2),
    };
    match app.cache.purge(&cache_key(id)).await {
        Ok(_) => Ok(Json(user).into_response()),
        // The row is updated and this process's L1 is purged; Redis (and so the other
        // processes) will be when the queued purge lands. Say so rather than fail the request.
        Err(TieredError::Pending(_)) => Ok((
            StatusCode::ACCEPTED,
            [("x-cache-purge", "pending")],
            Json(user),
        )
            .into_response()),
        Err(e) => Err(AppError::Cache(e)),
    }
}

/// A few counters, as text.
async fn stats(State(app): State<Arc<App>>) -> String {
    let s = app.cache.stats();
    format!(
        "l1_hits {}\nl2_hits {}\nloads {}\nl1_active {}\n",
        s.l1_hits,
        s.l2_hits,
        s.loads,
        app.cache.is_l1_active()
    )
}

/// Connects to PostgreSQL (spawning its connection task) within [`CONNECT_TIMEOUT`].
pub async fn connect_db(url: &str) -> Result<tokio_postgres::Client, String> {
    let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| with_causes(&e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection closed: {e}");
        }
    });
    Ok(client)
}

/// Creates `table` (as a `TEMPORARY` table of this connection if `temporary`) with three rows,
/// unless it exists.
pub async fn create_table(
    db: &tokio_postgres::Client,
    table: &str,
    temporary: bool,
) -> Result<(), tokio_postgres::Error> {
    let temp = if temporary { "TEMPORARY" } else { "" };
    db.batch_execute(&format!(
        "CREATE {temp} TABLE IF NOT EXISTS {table} \
             (id BIGINT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL);
         INSERT INTO {table} VALUES
             (1, 'Ada Lovelace', 'ada@example.com'),
             (2, 'Alan Turing', 'alan@example.com'),
             (3, 'Edsger Dijkstra', 'edsger@example.com')
         ON CONFLICT (id) DO NOTHING;"
    ))
    .await
}

/// Connects to Redis and builds the tiered cache (inside a tokio runtime).
pub async fn connect_cache(
    redis_url: &str,
    namespace: &str,
) -> Result<TieredCache<String, User>, String> {
    let options = RedisOptions::new(namespace).command_timeout(Duration::from_secs(1));
    let l2 = tokio::time::timeout(CONNECT_TIMEOUT, RedisStore::connect(redis_url, options))
        .await
        .map_err(|_| format!("timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| with_causes(&e))?;
    let cache = TieredCache::new(Cache::new(10_000), l2).map_err(|e| with_causes(&e))?;
    // Until the feed is confirmed every read goes to Redis; wait for it briefly.
    let _ = tokio::time::timeout(CONNECT_TIMEOUT, cache.feed_confirmed()).await;
    Ok(cache)
}

/// `error: cause: cause ...`: the whole chain, since the outer messages alone ("error connecting
/// to server") do not say what went wrong.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn fail(what: &str, detail: &str, hint: &str) -> ! {
    eprintln!("error: {what}: {detail}");
    eprintln!("{hint}");
    std::process::exit(1);
}

#[tokio::main]
async fn main() {
    let pg_url = env_or("LEASECACHE_PG_URL", DEFAULT_PG);
    let redis_url = env_or("LEASECACHE_REDIS_URL", DEFAULT_REDIS);
    let listen = env_or("LEASECACHE_LISTEN", DEFAULT_LISTEN);
    println!("leasecache example service: needs PostgreSQL and Redis");
    println!("  PostgreSQL: {pg_url} (set LEASECACHE_PG_URL to change)");
    println!("  Redis:      {redis_url} (set LEASECACHE_REDIS_URL to change)");

    let db = connect_db(&pg_url).await.unwrap_or_else(|e| {
        fail(
            &format!("cannot connect to PostgreSQL at {pg_url}"),
            &e,
            "start PostgreSQL (the database must exist and accept this user) or set LEASECACHE_PG_URL",
        )
    });
    if let Err(e) = create_table(&db, TABLE, false).await {
        fail(
            &format!("cannot create the table {TABLE}"),
            &with_causes(&e),
            "the user needs CREATE on the database's public schema",
        );
    }
    let cache = connect_cache(&redis_url, "example-service")
        .await
        .unwrap_or_else(|e| {
            fail(
                &format!("cannot connect to Redis at {redis_url}"),
                &e,
                "start one (redis-server --port 6379 --save '') or set LEASECACHE_REDIS_URL",
            )
        });
    let app = Arc::new(App {
        db,
        cache,
        table: TABLE.to_owned(),
    });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .unwrap_or_else(|e| {
            fail(
                &format!("cannot listen on {listen}"),
                &e.to_string(),
                "set LEASECACHE_LISTEN to a free address",
            )
        });
    println!("listening on http://{listen}");
    println!("  curl -s {listen}/users/1");
    println!(
        "  curl -s -X PUT {listen}/users/1 -H 'content-type: application/json' -d '{{\"name\":\"Grace Hopper\",\"email\":\"grace@example.com\"}}'"
    );
    println!("  curl -s {listen}/stats");
    if let Err(e) = axum::serve(listener, router(app)).await {
        fail("the server stopped", &e.to_string(), "");
    }
}
