//! The replica-lag race against a real PostgreSQL primary and hot standby.
//!
//! Starts its own primary (`initdb`) and streaming hot standby (`pg_basebackup -R`, with
//! `recovery_min_apply_delay` for a real replay lag) in a temporary directory on free loopback
//! ports, then runs cache-aside against them with `tokio-postgres`: writers `UPDATE` a row on the
//! primary and purge its key; readers miss, read the **standby**, and save. Three modes, same
//! workload, each printed as one row of a table:
//!
//! - leases alone: a lease taken after the purge is current, the standby's row is not: the old
//!   row is cached, and served after the standby has caught up (stale checks);
//! - leases + a hold-off longer than the lag (`CacheBuilder::hold_off`): none;
//! - leases + LSN positions: the writer purges as of `pg_current_wal_lsn()` read after its
//!   commit, a reader saves as of `pg_last_wal_replay_lsn()` read on the standby *before* the
//!   row: none, with no hold-off.
//!
//! A check is one write: once the standby has replayed it (the writer polls the standby's replay
//! LSN), a read that starts afterwards must not return an older version.
//!
//! ```text
//! cargo run --release --features postgres-example --example postgres_replica
//! cargo run --release --features postgres-example --example postgres_replica -- --checks 80 --lag-ms 300
//! ```
//!
//! Needs the PostgreSQL server binaries (`initdb`, `pg_ctl`, `pg_basebackup`; versions 12 and
//! later) on `PATH`, in `/usr/lib/postgresql/*/bin`, or in the directory named by `PG_BIN`. Run as
//! root, it runs them as the `postgres` user (PostgreSQL refuses to run as root).

use leasecache::{Cache, Lookup};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

const USAGE: &str = "\
usage: postgres_replica [--checks N] [--readers N] [--keys N] [--lag-ms N]

  --checks N   writes checked per mode                       [default 60]
  --readers N  concurrent readers (each its own connection)  [default 8]
  --keys N     rows, each with its own writer                [default 4]
  --lag-ms N   the standby's recovery_min_apply_delay, ms    [default 300]";

struct Config {
    checks: u32,
    readers: usize,
    keys: usize,
    lag: Duration,
}

fn parse_args() -> Result<Config, String> {
    let mut c = Config {
        checks: 60,
        readers: 8,
        keys: 4,
        lag: Duration::from_millis(300),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = value
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} wants a positive integer, got {value:?}"))?;
        match flag.as_str() {
            "--checks" => c.checks = n.min(100_000) as u32,
            "--readers" => c.readers = n.min(64) as usize,
            "--keys" => c.keys = n.min(64) as usize,
            "--lag-ms" => c.lag = Duration::from_millis(n.min(60_000)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(c)
}

/// Where the PostgreSQL server binaries are, or what is missing.
fn find_bin_dir() -> Result<PathBuf, String> {
    const NEEDED: [&str; 3] = ["initdb", "pg_ctl", "pg_basebackup"];
    let has_all = |dir: &Path| NEEDED.iter().all(|b| dir.join(b).is_file());
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("PG_BIN") {
        candidates.push(dir.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    candidates.into_iter().find(|d| has_all(d)).ok_or_else(|| {
        "this example needs a PostgreSQL server installation (12 or later): the programs \
         initdb, pg_ctl and pg_basebackup, found on PATH, in /usr/lib/postgresql/*/bin, or in \
         the directory named by PG_BIN. On Debian or Ubuntu: apt-get install postgresql. \
         Nothing was started."
            .to_owned()
    })
}

/// A free loopback port (the listener is dropped before the server binds it).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// The primary and the standby, stopped when dropped.
struct Servers {
    bin: PathBuf,
    as_postgres: bool,
    dir: tempfile::TempDir,
    primary_port: u16,
    standby_port: u16,
    started: Vec<PathBuf>,
}

impl Servers {
    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn append_conf(&self, data: &str, lines: &str) -> Result<(), String> {
        use std::io::Write;
        let file = self.dir.path().join(data).join("postgresql.conf");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .and_then(|mut f| f.write_all(lines.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", file.display()))
    }

    fn start(bin: PathBuf, lag: Duration) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("leasecache-pg-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:", &dir.path().display().to_string()])
                .status();
            if !status.is_ok_and(|s| s.success()) {
                return Err(
                    "running as root, and cannot hand the temporary directory to the \
                            postgres user (is there one?)"
                        .into(),
                );
            }
        }
        let mut servers = Self {
            bin,
            as_postgres,
            dir,
            primary_port: free_port()?,
            standby_port: free_port()?,
            started: Vec::new(),
        };
        let (primary, standby) = (servers.path("primary"), servers.path("standby"));
        let sockets = servers.dir.path().display().to_string();
        servers.run(
            "initdb",
            &[
                "-D",
                &primary,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        )?;
        servers.append_conf(
            "primary",
            &format!(
                "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sockets}'\n\
                 wal_level = replica\nmax_wal_senders = 4\nfsync = off\n",
                servers.primary_port
            ),
        )?;
        let log = servers.path("primary.log");
        servers.run("pg_ctl", &["-D", &primary, "-l", &log, "-w", "start"])?;
        servers.started.push(primary.clone().into());
        let port = servers.primary_port.to_string();
        servers.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &standby,
                "-R",
                "-X",
                "stream",
            ],
        )?;
        servers.append_conf(
            "standby",
            &format!(
                "\nport = {}\nhot_standby = on\nrecovery_min_apply_delay = '{}ms'\n",
                servers.standby_port,
                lag.as_millis()
            ),
        )?;
        let log = servers.path("standby.log");
        servers.run("pg_ctl", &["-D", &standby, "-l", &log, "-w", "start"])?;
        servers.started.push(standby.into());
        Ok(servers)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let started = std::mem::take(&mut self.started);
        for data in started.into_iter().rev() {
            let data = data.display().to_string();
            if let Err(e) = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]) {
                eprintln!("postgres_replica: stopping {data}: {e}");
            }
        }
    }
}

async fn connect(port: u16) -> Result<Client, String> {
    let config = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let (client, connection) = tokio_postgres::connect(&config, NoTls)
        .await
        .map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres_replica: connection to port {port}: {e}");
        }
    });
    Ok(client)
}

/// A WAL position (`X/Y`) as the `u64` it stands for.
fn lsn(text: &str) -> Result<u64, String> {
    let (hi, lo) = text
        .split_once('/')
        .ok_or_else(|| format!("not an LSN: {text:?}"))?;
    let part = |p: &str| u64::from_str_radix(p, 16).map_err(|_| format!("not an LSN: {text:?}"));
    Ok(part(hi)? << 32 | part(lo)?)
}

async fn query_lsn(client: &Client, sql: &str) -> Result<u64, String> {
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(|e| e.to_string())?;
    let text: Option<String> = row.get(0);
    lsn(text.as_deref().unwrap_or("0/0"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Guard {
    LeasesAlone,
    HoldOff,
    Positions,
}

/// One mode's shared state.
struct Run {
    cache: Cache<i32, i64>,
    guard: Guard,
    /// Per key: the version a read must not be older than (high 32 bits) and its check + 1.
    floors: Vec<AtomicU64>,
    stale_checks: Vec<AtomicBool>,
    stale_reads: AtomicU64,
    standby_reads: AtomicU64,
    next_check: AtomicU64,
    checks: u32,
    done: AtomicBool,
}

async fn reader(run: Arc<Run>, standby: Client, seed: u64) -> Result<(), String> {
    let keys = run.floors.len() as u64;
    let mut x = seed | 1;
    while !run.done.load(Ordering::Relaxed) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = (x % keys) as i32;
        // Acquire pairs with the writer's Release store once the standby replayed the write.
        let floor = run.floors[key as usize].load(Ordering::Acquire);
        let (version, check) = (floor >> 32, floor & u64::from(u32::MAX));
        let seen = match run.cache.get_or_lease(&key) {
            Lookup::Hit(v) => v,
            Lookup::Miss(lease) => {
                run.standby_reads.fetch_add(1, Ordering::Relaxed);
                // The position first: the row read after it reflects at least that much WAL.
                let position = query_lsn(&standby, "SELECT pg_last_wal_replay_lsn()::text").await?;
                let row = standby
                    .query_one("SELECT v FROM rows WHERE id = $1", &[&key])
                    .await
                    .map_err(|e| e.to_string())?;
                let v: i64 = row.get(0);
                let _ = match run.guard {
                    Guard::Positions => run.cache.save_as_of(key, v, lease, position),
                    _ => run.cache.save_with_lease(key, v, lease),
                };
                v
            }
        };
        if check > 0 && (seen as u64) < version {
            run.stale_reads.fetch_add(1, Ordering::Relaxed);
            run.stale_checks[check as usize - 1].store(true, Ordering::Relaxed);
        }
        // Pace the readers: hits would otherwise spin on two cores.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

async fn writer(run: Arc<Run>, primary: Client, standby: Client, key: i32) -> Result<(), String> {
    loop {
        tokio::time::sleep(Duration::from_millis(20 + (key as u64 * 37) % 60)).await;
        let check = run.next_check.fetch_add(1, Ordering::Relaxed);
        if check >= u64::from(run.checks) {
            return Ok(());
        }
        let row = primary
            .query_one(
                "UPDATE rows SET v = v + 1 WHERE id = $1 RETURNING v",
                &[&key],
            )
            .await
            .map_err(|e| e.to_string())?;
        let version: i64 = row.get(0);
        let committed = query_lsn(&primary, "SELECT pg_current_wal_lsn()::text").await?;
        match run.guard {
            Guard::Positions => run.cache.purge_as_of(&key, committed),
            _ => run.cache.purge(&key),
        };
        // The check starts once the standby has replayed the commit (reads of the standby itself
        // are old until then, cache or no cache).
        let deadline = Instant::now() + Duration::from_secs(30);
        while query_lsn(&standby, "SELECT pg_last_wal_replay_lsn()::text").await? < committed {
            if Instant::now() > deadline {
                return Err("the standby did not replay a commit within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Release pairs with the readers' Acquire load.
        run.floors[key as usize].store((version as u64) << 32 | (check + 1), Ordering::Release);
    }
}

async fn run_mode(
    guard: Guard,
    config: &Config,
    servers: &Servers,
) -> Result<(usize, u64, u64), String> {
    let builder = Cache::builder().max_capacity(10_000);
    let cache = match guard {
        // The hold-off must cover the lag, plus streaming and scheduling slack.
        Guard::HoldOff => builder
            .hold_off(config.lag + Duration::from_millis(250))
            .build(),
        _ => builder.build(),
    };
    let run = Arc::new(Run {
        cache,
        guard,
        floors: (0..config.keys).map(|_| AtomicU64::new(0)).collect(),
        stale_checks: (0..config.checks).map(|_| AtomicBool::new(false)).collect(),
        stale_reads: AtomicU64::new(0),
        standby_reads: AtomicU64::new(0),
        next_check: AtomicU64::new(0),
        checks: config.checks,
        done: AtomicBool::new(false),
    });
    let mut readers = Vec::new();
    for r in 0..config.readers {
        let standby = connect(servers.standby_port).await?;
        readers.push(tokio::spawn(reader(
            Arc::clone(&run),
            standby,
            0x9E37 + r as u64,
        )));
    }
    let mut writers = Vec::new();
    for k in 0..config.keys {
        let primary = connect(servers.primary_port).await?;
        let standby = connect(servers.standby_port).await?;
        writers.push(tokio::spawn(writer(
            Arc::clone(&run),
            primary,
            standby,
            k as i32,
        )));
    }
    for w in writers {
        w.await.map_err(|e| e.to_string())??;
    }
    // Let the readers verify the last writes.
    tokio::time::sleep(config.lag).await;
    run.done.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.map_err(|e| e.to_string())??;
    }
    let stale = run
        .stale_checks
        .iter()
        .filter(|c| c.load(Ordering::Relaxed))
        .count();
    Ok((
        stale,
        run.stale_reads.load(Ordering::Relaxed),
        run.standby_reads.load(Ordering::Relaxed),
    ))
}

async fn experiment(config: &Config, servers: &Servers) -> Result<(), String> {
    let primary = connect(servers.primary_port).await?;
    let keys = config.keys as i32;
    primary
        .batch_execute("CREATE TABLE rows (id int PRIMARY KEY, v bigint NOT NULL)")
        .await
        .map_err(|e| e.to_string())?;
    primary
        .execute(
            "INSERT INTO rows SELECT g, 0 FROM generate_series(0, $1 - 1) g",
            &[&keys],
        )
        .await
        .map_err(|e| e.to_string())?;
    let created = query_lsn(&primary, "SELECT pg_current_wal_lsn()::text").await?;
    let standby = connect(servers.standby_port).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while query_lsn(&standby, "SELECT pg_last_wal_replay_lsn()::text").await? < created {
        if Instant::now() > deadline {
            return Err("the standby did not replay the table within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "postgres_replica: {} checks per mode, {} readers, {} rows, standby \
         recovery_min_apply_delay {} ms\n",
        config.checks,
        config.readers,
        config.keys,
        config.lag.as_millis()
    );
    println!("| mode | stale checks / checks | stale reads | standby reads |");
    println!("|---|---:|---:|---:|");
    let modes = [
        (Guard::LeasesAlone, "leases alone".to_owned()),
        (
            Guard::HoldOff,
            format!(
                "leases + hold-off {} ms",
                (config.lag + Duration::from_millis(250)).as_millis()
            ),
        ),
        (Guard::Positions, "leases + LSN positions".to_owned()),
    ];
    for (guard, name) in modes {
        eprintln!("{name}...");
        let (stale, stale_reads, reads) = run_mode(guard, config, servers).await?;
        println!(
            "| {name} | {stale} / {} | {stale_reads} | {reads} |",
            config.checks
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(c) => c,
        Err(m) if m.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(m) => {
            eprintln!("postgres_replica: {m}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let bin = match find_bin_dir() {
        Ok(bin) => bin,
        Err(m) => {
            eprintln!("postgres_replica: {m}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "starting a primary and a hot standby from {} ...",
        bin.display()
    );
    let servers = match Servers::start(bin, config.lag) {
        Ok(s) => s,
        Err(m) => {
            eprintln!("postgres_replica: {m}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postgres_replica: cannot start a tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(experiment(&config, &servers));
    drop(runtime);
    drop(servers);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(m) => {
            eprintln!("postgres_replica: {m}");
            ExitCode::from(1)
        }
    }
}
