//! The Redis tier under bad, hostile and foreign input (issue 14), and its errors (issue 20):
//! forged lease tokens, foreign and oversized stored values, schema versions, huge hashes,
//! configuration mistakes and error chains. Real `redis-server` processes (see `support`).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use leasecache::Lookup;
use leasecache::redis::{RedisLease, RedisOptions, RedisStore, RedisStoreError, Saved};
use support::{RedisCluster, RedisServer};

const TIMEOUT: Duration = Duration::from_secs(2);

fn opts(ns: &str) -> RedisOptions {
    RedisOptions::new(ns).command_timeout(TIMEOUT)
}

async fn store(server: &RedisServer, ns: &str) -> RedisStore<String> {
    RedisStore::connect(&server.url(), opts(ns))
        .await
        .expect("connect")
}

async fn lease_on(s: &RedisStore<String>, key: &str, field: Option<&str>) -> RedisLease {
    let lookup = match field {
        None => s.get_or_lease(key).await,
        Some(f) => s.get_field_or_lease(key, f).await,
    };
    match lookup.expect("get_or_lease") {
        Lookup::Miss(l) => l,
        Lookup::Hit(v) => panic!("expected a miss on {key}/{field:?}, got {v:?}"),
    }
}

/// A raw connection for writing bytes redis-cli cannot pass.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

// ---------------------------------------------------------------- forged tokens

/// The token's body, split as `to_token` writes it: namespace, key, field (tag + name), proof,
/// issue seconds, issue micros. Rebuilt with a valid checksum: what a forger would do.
struct Token {
    namespace: Vec<u8>,
    key: Vec<u8>,
    field: Option<Vec<u8>>,
    proof: Vec<u8>,
    secs: u64,
    micros: u64,
    /// The signature section (tag byte, then the MAC if signed), kept as it was.
    signature: Vec<u8>,
}

impl Token {
    fn parse(token: &str) -> Self {
        let hex = token.strip_prefix("lcr2.").expect("format 2 token");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let mut body = &bytes[..bytes.len() - 8];
        let mut take = |n: usize| {
            let (head, tail) = body.split_at(n);
            body = tail;
            head.to_vec()
        };
        let string = |take: &mut dyn FnMut(usize) -> Vec<u8>| {
            let len = u32::from_be_bytes(take(4).try_into().unwrap()) as usize;
            take(len)
        };
        let namespace = string(&mut take);
        let key = string(&mut take);
        let field = match take(1)[0] {
            0 => None,
            _ => Some(string(&mut take)),
        };
        let proof = string(&mut take);
        let secs = u64::from_be_bytes(take(8).try_into().unwrap());
        let micros = u64::from_be_bytes(take(8).try_into().unwrap());
        let signature = body.to_vec();
        Self {
            namespace,
            key,
            field,
            proof,
            secs,
            micros,
            signature,
        }
    }

    fn to_token(&self) -> String {
        let put = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        };
        let mut body = Vec::new();
        put(&mut body, &self.namespace);
        put(&mut body, &self.key);
        match &self.field {
            None => body.push(0),
            Some(f) => {
                body.push(1);
                put(&mut body, f);
            }
        }
        put(&mut body, &self.proof);
        body.extend_from_slice(&self.secs.to_be_bytes());
        body.extend_from_slice(&self.micros.to_be_bytes());
        body.extend_from_slice(&self.signature);
        let sum = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        body.extend_from_slice(&sum.to_be_bytes());
        let mut out = String::from("lcr2.");
        for b in body {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_cannot_rebind_the_field_or_move_the_issue_time() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "t").await;
    s.insert("k", &"v".into()).await.unwrap();
    // Two outstanding leases on fields of the same key share the key's marker.
    let la = lease_on(&s, "k", Some("a")).await;
    let _lb = lease_on(&s, "k", Some("b")).await;

    // The forger's helper is faithful: an unchanged rebuild is the same lease.
    let t = Token::parse(&la.to_token());
    assert_eq!(RedisLease::from_token(&t.to_token()).unwrap(), la);

    // Rebinding field a's lease to field b (valid checksum, same proof) is stale.
    let mut rebound = Token::parse(&la.to_token());
    rebound.field = Some(b"b".to_vec());
    let rebound = RedisLease::from_token(&rebound.to_token()).unwrap();
    assert_eq!(
        s.save_field_with_lease("k", "b", &"forged".into(), &rebound)
            .await
            .unwrap(),
        Saved::Stale
    );
    // Rebinding it to the key's own value is stale too.
    let mut to_value = Token::parse(&la.to_token());
    to_value.field = None;
    let to_value = RedisLease::from_token(&to_value.to_token()).unwrap();
    assert_eq!(
        s.save_with_lease("k", &"forged".into(), &to_value)
            .await
            .unwrap(),
        Saved::Stale
    );

    // An issue time moved into the future (to make its age negative) is stale, with the
    // original proof and even with the proof a server would compute for that time.
    let mut future = Token::parse(&la.to_token());
    future.secs += 3600;
    let future = RedisLease::from_token(&future.to_token()).unwrap();
    assert_eq!(
        s.save_field_with_lease("k", "a", &"forged".into(), &future)
            .await
            .unwrap(),
        Saved::Stale
    );
    let marker = server.cli(&["HGET", "t:k", "!g"]);
    let mut insider = Token::parse(&la.to_token());
    insider.secs += 3600;
    let field = "f:a";
    let script = "return redis.sha1hex(ARGV[1] .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3] .. '\\n' .. ARGV[4] .. '\\n' .. ARGV[1])";
    insider.proof = server
        .cli(&[
            "EVAL",
            script,
            "0",
            &marker,
            field,
            &insider.secs.to_string(),
            &insider.micros.to_string(),
        ])
        .into_bytes();
    let insider = RedisLease::from_token(&insider.to_token()).unwrap();
    assert_eq!(
        s.save_field_with_lease("k", "a", &"forged".into(), &insider)
            .await
            .unwrap(),
        Saved::Stale,
        "an issue time in the future is refused by the script itself"
    );

    // Nothing above landed; the genuine lease still does.
    assert!(s.get_field("k", "b").await.unwrap().is_none());
    assert_eq!(s.get("k").await.unwrap().as_deref(), Some("v"));
    assert_eq!(
        s.save_field_with_lease("k", "a", &"real".into(), &la)
            .await
            .unwrap(),
        Saved::Stored
    );

    // The marker never leaves the server: not in the lease, its token or its Debug.
    let l = lease_on(&s, "fresh", None).await;
    let marker = server.cli(&["HGET", "t:fresh", "!g"]);
    assert!(!marker.is_empty());
    let debug = format!("{l:?}");
    assert!(!debug.contains(&marker), "{debug}");
    assert!(
        !debug.contains(l.generation()),
        "Debug hides the proof: {debug}"
    );
    assert_ne!(l.generation(), marker);
    let token_bytes = Token::parse(&l.to_token());
    assert_ne!(token_bytes.proof, marker.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessed_proofs_never_save() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "t").await;
    let real = lease_on(&s, "k", None).await;
    s.purge("k").await.unwrap();
    let fresh = lease_on(&s, "k", None).await; // the proof a forger would need to guess
    for guess in [
        "0.0.0000000000000000",
        "",
        "x",
        &"9".repeat(40),
        real.generation(),
    ] {
        let mut t = Token::parse(&real.to_token());
        t.proof = guess.as_bytes().to_vec();
        match RedisLease::from_token(&t.to_token()) {
            Ok(forged) => assert_eq!(
                s.save_with_lease("k", &"forged".into(), &forged)
                    .await
                    .unwrap(),
                Saved::Stale
            ),
            Err(e) => assert!(matches!(e, RedisStoreError::InvalidLease(_)), "{e}"),
        }
    }
    assert_eq!(s.get("k").await.unwrap(), None);
    assert_eq!(
        s.save_with_lease("k", &"real".into(), &fresh)
            .await
            .unwrap(),
        Saved::Stored
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_secret_refuses_altered_and_foreign_tokens_before_sending() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let secret = b"0123456789abcdef-secret".to_vec();
    let with = |secret: &[u8]| opts("t").lease_secret(secret.to_vec());
    let s: RedisStore<String> = RedisStore::connect(&server.url(), with(&secret))
        .await
        .unwrap();
    let same: RedisStore<String> = RedisStore::connect(&server.url(), with(&secret))
        .await
        .unwrap();
    let other: RedisStore<String> =
        RedisStore::connect(&server.url(), with(b"another secret of 16+ bytes"))
            .await
            .unwrap();
    let unsigned = store(&server, "t").await;
    assert!(!format!("{:?}", with(&secret)).contains("0123456789abcdef"));

    let l = lease_on(&s, "k", Some("a")).await;
    assert!(format!("{l:?}").contains("signed: true"));
    let invalid = |r: Result<Saved, RedisStoreError>| matches!(r, Err(RedisStoreError::InvalidLease(why)) if why.contains("secret"));
    // Any alteration with a valid checksum: the field, the time, the proof.
    let mut t = Token::parse(&l.to_token());
    t.field = Some(b"b".to_vec());
    let forged = RedisLease::from_token(&t.to_token()).unwrap();
    assert!(invalid(
        s.save_field_with_lease("k", "b", &"x".into(), &forged)
            .await
    ));
    let mut t = Token::parse(&l.to_token());
    t.secs -= 1;
    let forged = RedisLease::from_token(&t.to_token()).unwrap();
    assert!(invalid(
        s.save_field_with_lease("k", "a", &"x".into(), &forged)
            .await
    ));
    // An unsigned lease, and one signed with another secret.
    let u = lease_on(&unsigned, "k", Some("a")).await;
    assert!(invalid(
        s.save_field_with_lease("k", "a", &"x".into(), &u).await
    ));
    assert!(invalid(
        other.save_field_with_lease("k", "a", &"x".into(), &l).await
    ));
    // Nothing above reached Redis: the genuine lease, through its token, still saves on a store
    // with the same secret.
    let back = RedisLease::from_token(&l.to_token()).unwrap();
    assert_eq!(
        same.save_field_with_lease("k", "a", &"real".into(), &back)
            .await
            .unwrap(),
        Saved::Stored
    );
    // A store without a secret accepts signed leases (the proof still binds them).
    let l2 = lease_on(&s, "k2", None).await;
    assert_eq!(
        unsigned
            .save_with_lease("k2", &"v".into(), &l2)
            .await
            .unwrap(),
        Saved::Stored
    );
    let err = RedisStore::<String>::connect(&server.url(), opts("t").lease_secret("short"))
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err:?}");
}

// ---------------------------------------------------------------- bad stored data

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_value_version_is_a_miss_that_heals() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let v0: RedisStore<String> = RedisStore::connect(&server.url(), opts("t")).await.unwrap();
    let v1: RedisStore<String> = RedisStore::connect(&server.url(), opts("t").value_version(1))
        .await
        .unwrap();
    v0.insert("k", &"old shape".into()).await.unwrap();
    // v1 cannot use v0's value: a miss with a lease, counted; its save replaces the value.
    let l = lease_on(&v1, "k", None).await;
    assert_eq!(v1.unreadable_values(), 1);
    assert!(matches!(v1.get("k").await, Err(RedisStoreError::Decode(_))));
    assert_eq!(
        v1.save_with_lease("k", &"new shape".into(), &l)
            .await
            .unwrap(),
        Saved::Stored
    );
    assert_eq!(
        v1.get_or_lease("k").await.unwrap(),
        Lookup::Hit("new shape".into())
    );
    // And the other way round during a rolling deploy.
    assert!(!v0.get_or_lease("k").await.unwrap().is_hit());
    assert_eq!(v0.unreadable_values(), 1);

    // A foreign value without the header is a miss that heals too (sub-entries as well).
    let mut c = raw(&server).await;
    let _: () = redis::cmd("HSET")
        .arg("t:foreign")
        .arg("f:x")
        .arg("plain text")
        .query_async(&mut c)
        .await
        .unwrap();
    let l = lease_on(&v0, "foreign", Some("x")).await;
    assert_eq!(
        v0.save_field_with_lease("foreign", "x", &"ours".into(), &l)
            .await
            .unwrap(),
        Saved::Stored
    );
    assert_eq!(
        v0.get_field("foreign", "x").await.unwrap().as_deref(),
        Some("ours")
    );
}

/// `total_net_output_bytes` from `INFO stats`.
fn net_output(server: &RedisServer) -> u64 {
    server
        .cli(&["INFO", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_net_output_bytes in INFO")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_stored_values_never_cross_the_wire() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s: RedisStore<String> = RedisStore::connect(&server.url(), opts("t").max_value_bytes(1024))
        .await
        .unwrap();
    // A foreign 4 MB value under the namespace.
    let big = vec![b'x'; 4 << 20];
    let mut c = raw(&server).await;
    let _: () = redis::cmd("HSET")
        .arg("t:big")
        .arg("!v")
        .arg(big.as_slice())
        .query_async(&mut c)
        .await
        .unwrap();

    let before = net_output(&server);
    let err = s.get("big").await.unwrap_err();
    assert!(
        matches!(err, RedisStoreError::TooLarge { limit: 1024, .. }),
        "{err:?}"
    );
    let l = lease_on(&s, "big", None).await;
    assert_eq!(s.unreadable_values(), 1);
    let sent = net_output(&server) - before;
    assert!(
        sent < 64 * 1024,
        "{sent} bytes sent: the value crossed the wire"
    );
    // The lease heals it.
    assert_eq!(
        s.save_with_lease("big", &"small".into(), &l).await.unwrap(),
        Saved::Stored
    );
    assert_eq!(s.get("big").await.unwrap().as_deref(), Some("small"));
}

// ---------------------------------------------------------------- huge hashes

/// Calls of `cmd` in `INFO commandstats` (commands run by scripts are counted too).
fn calls(server: &RedisServer, cmd: &str) -> u64 {
    let prefix = format!("cmdstat_{cmd}:calls=");
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_hashes_are_unlinked_and_scanned() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "t").await;
    s.insert("h", &"v".into()).await.unwrap();
    // 2500 sub-entries: more than one HSCAN step.
    let mut c = raw(&server).await;
    let mut hset = redis::cmd("HSET");
    hset.arg("t:h");
    for i in 0..2500 {
        hset.arg(format!("f:n{i}")).arg("x");
    }
    let _: () = hset.query_async(&mut c).await.unwrap();

    let mut names = s.list_fields("h").await.unwrap();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 2500);
    assert!(names.iter().all(|n| n.starts_with('n')));
    assert!(calls(&server, "hscan") > 1, "walked in steps");
    assert_eq!(calls(&server, "hkeys"), 0);

    // A non-UTF-8 name is reported, not dropped.
    let _: () = redis::cmd("HSET")
        .arg("t:h")
        .arg(b"f:\xff\xfe".as_slice())
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    match s.list_fields("h").await {
        Err(RedisStoreError::NonUtf8Field(raw)) => assert_eq!(raw, b"\xff\xfe"),
        other => panic!("expected NonUtf8Field, got {other:?}"),
    }

    // Purge and insert free with UNLINK, never a blocking DEL.
    assert!(s.purge("h").await.unwrap());
    s.insert("h", &"again".into()).await.unwrap();
    assert_eq!(calls(&server, "del"), 0);
    assert!(calls(&server, "unlink") >= 3, "insert, purge, insert");
    assert_eq!(server.cli(&["HLEN", "t:h"]), "1");
}

// ---------------------------------------------------------------- the feed is published atomically

/// Reads `MONITOR` lines until one mentions `needle` (case-insensitive); returns it.
fn monitor_line(reader: &mut BufReader<TcpStream>, needle: &str) -> String {
    let needle = needle.to_ascii_lowercase();
    for _ in 0..1000 {
        let mut line = String::new();
        reader.read_line(&mut line).expect("MONITOR line");
        if line.to_ascii_lowercase().contains(&needle) {
            return line;
        }
    }
    panic!("no MONITOR line with {needle}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_are_published_by_the_fencing_script_itself() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "t").await;
    let mut monitor = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    monitor
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    monitor.write_all(b"MONITOR\r\n").unwrap();
    let mut reader = BufReader::new(monitor);
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert_eq!(ok.trim(), "+OK");

    // A PUBLISH run by a script shows in MONITOR as `[db lua]`; one sent as its own command
    // shows the client's address instead. Each fencing write must publish from its script.
    s.purge("p").await.unwrap();
    let line = monitor_line(&mut reader, "\"publish\"");
    assert!(
        line.contains(" lua]"),
        "purge published outside its script: {line}"
    );
    s.insert("i", &"v".into()).await.unwrap();
    let line = monitor_line(&mut reader, "\"publish\"");
    assert!(
        line.contains(" lua]"),
        "insert published outside its script: {line}"
    );
    s.purge_field("pf", "f").await.unwrap();
    let line = monitor_line(&mut reader, "\"publish\"");
    assert!(
        line.contains(" lua]"),
        "purge_field published outside its script: {line}"
    );
}

// ---------------------------------------------------------------- flush across a migration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_reaches_keys_of_a_slot_in_migration() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let s: RedisStore<String> = RedisStore::connect_cluster(&urls, opts("c")).await.unwrap();
    // Two keys of one slot (hash tag), and one elsewhere.
    for k in ["{m}1", "{m}2", "other"] {
        s.insert(k, &"v".into()).await.unwrap();
    }
    let from = cluster.node_for_key("c:{m}1");
    let to = (from + 1) % cluster.len();
    let slot = cluster.cli(from, &["CLUSTER", "KEYSLOT", "c:{m}1"]);
    let id = |i: usize| cluster.cli(i, &["CLUSTER", "MYID"]);
    let to_port = cluster.ports()[to].to_string();
    // Halfway through moving the slot: one key already on the target, one still on the source.
    assert_eq!(
        cluster.cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &id(from)]),
        "OK"
    );
    assert_eq!(
        cluster.cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &id(to)]),
        "OK"
    );
    assert_eq!(
        cluster.cli(
            from,
            &["MIGRATE", "127.0.0.1", &to_port, "c:{m}1", "0", "5000"]
        ),
        "OK"
    );

    s.flush().await.unwrap();
    for i in 0..cluster.len() {
        assert_eq!(cluster.cli(i, &["DBSIZE"]), "0", "node {i} kept keys");
    }
}

// ---------------------------------------------------------------- configuration and errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_mistakes_are_their_own_kind_and_name_the_input() {
    let cases = [
        ("http://127.0.0.1:6379/", "http://127.0.0.1:6379/"),
        ("127.0.0.1:6379", "127.0.0.1:6379"),
        ("redis://127.0.0.1:99999/", "redis://127.0.0.1:99999/"),
        ("", "\"\""),
        (
            "redis://admin:hunter2@127.0.0.1:99999/",
            "redis://admin:***@127.0.0.1:99999/",
        ),
    ];
    for (url, named) in cases {
        let err = RedisStore::<String>::connect(url, opts("t"))
            .await
            .unwrap_err();
        assert!(err.is_config(), "{url:?}: {err:?}");
        assert!(!err.is_transient(), "{url:?}");
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert!(chain.contains(named), "{url:?} not named in: {chain}");
        assert!(!chain.contains("hunter2"), "password leaked: {chain}");
        let err = RedisStore::<String>::connect_cluster(&[url], opts("t"))
            .await
            .unwrap_err();
        assert!(err.is_config(), "cluster {url:?}: {err:?}");
    }
    // A namespace with ':' is refused with the reason and what to use instead.
    let err = RedisStore::<String>::connect("redis://127.0.0.1:1/", opts("app:users"))
        .await
        .unwrap_err();
    assert!(err.is_config());
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert!(chain.contains("\"app:users\""), "{chain}");
    assert!(
        chain.contains("\"app.users\""),
        "suggests a separator: {chain}"
    );
}

/// How often `needle` occurs in `haystack`.
fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_chains_print_each_cause_once() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "t").await;
    // A transport failure: the server is gone.
    server.kill9();
    let chain = support::report_with_each_cause_once(s.get("k").await.unwrap_err());
    assert!(
        chain.starts_with("redis is unreachable or unavailable"),
        "{chain}"
    );

    // A server error: code and message once, below the store's own layer.
    server.restart();
    let s = store(&server, "t").await;
    server.cli(&["SET", "t:str", "1"]);
    let chain = format!("{:#}", anyhow::Error::from(s.get("str").await.unwrap_err()));
    assert!(
        chain.starts_with("redis refused the command: WRONGTYPE"),
        "{chain}"
    );
    assert_eq!(count(&chain, "WRONGTYPE"), 1, "{chain}");
    assert_eq!(count(&chain, "Operation against a key"), 1, "{chain}");

    // A decode failure: the store's layer, then the codec's error, once.
    server.cli(&["HSET", "t:bad", "!v", "xyz"]);
    let chain = format!("{:#}", anyhow::Error::from(s.get("bad").await.unwrap_err()));
    assert_eq!(
        chain,
        "could not decode the stored value: stored value has no leasecache header (written by another program?)"
    );
}
