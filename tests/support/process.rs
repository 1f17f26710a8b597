//! Child processes for multi-process tests: the test binary re-executes itself, running one test
//! function in a *role* named by an environment variable, so a test can spread one scenario over
//! several real OS processes, and kill (SIGKILL) or pause (SIGSTOP / SIGCONT) them.
//!
//! A child reports by printing one line `CHILD-RESULT key=value ...` (integers) on stdout.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The environment variable that names a child's role.
pub const ROLE: &str = "LEASECACHE_CHILD_ROLE";

/// This process's role, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// Prints a child's report (`CHILD-RESULT k=v ...`), the line [`Proc::finish`] parses.
pub fn report(values: &[(&str, u64)]) {
    let fields: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("CHILD-RESULT {}", fields.join(" "));
}

/// A child running test `test` of this binary in role `role`; SIGKILLed on drop if still running.
pub struct Proc {
    name: String,
    child: Child,
    stdout: Option<JoinHandle<String>>,
}

impl Proc {
    /// Spawns `<this test binary> <test> --exact --nocapture` with `ROLE=role` and `env`.
    pub fn spawn(test: &str, role: &str, env: &[(&str, String)]) -> Self {
        let exe = std::env::current_exe().expect("current test binary");
        let mut cmd = Command::new(exe);
        cmd.args([test, "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env(ROLE, role)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Its own process group, whose parent (this test) is in another group of the session:
        // the group is never orphaned while the test runs, so a SIGSTOPped child is not sent
        // SIGHUP by the kernel when the shell that started the test has already exited.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("spawn the test binary as a child");
        let mut out = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        Self {
            name: role.to_owned(),
            child,
            stdout: Some(stdout),
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the process stops where it is (its clocks keep running).
    pub fn stop(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {} ({})", self.pid(), self.name);
    }

    /// Waits (at most `limit`, then SIGKILLs and panics) for the child to exit; returns its
    /// status and the values of its `CHILD-RESULT` line (empty if it printed none).
    pub fn finish(mut self, limit: Duration) -> (ExitStatus, HashMap<String, u64>) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("child {} did not finish within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let out = self.stdout.take().expect("stdout").join().expect("reader");
        let mut values = HashMap::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("CHILD-RESULT ") {
                for field in rest.split_whitespace() {
                    if let Some((k, v)) = field.split_once('=') {
                        values.insert(k.to_owned(), v.parse().expect("integer result"));
                    }
                }
            }
        }
        (status, values)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill9(); // SIGKILL ends a stopped process too
        }
    }
}
