//! The real `gateway` binary as a child process, so tests can restart it, kill -9 it and read
//! its log.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::DEADLINE;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The gateway binary: `GATEWAY_BIN` when set, else the one cargo built beside the running
/// test (`target/<profile>/gateway`; `cargo test` and `cargo bench` build it first).
pub fn gateway_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("GATEWAY_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("a test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("gateway");
    assert!(bin.is_file(), "no gateway binary at {} (build it, or set GATEWAY_BIN)", bin.display());
    bin
}

/// The gateway binary, run as a child process so tests can kill -9 it.
///
/// The first start listens on port 0 and the port is read from the gateway's own log line
/// naming its `listen` address and `pid`: a port picked by the test and handed over could be taken by
/// another test's process in between, and that process would answer this test's requests.
/// Restarts keep the port (clients resume at the same address) and count as up only once
/// this process logged that it holds it.
pub struct Gateway {
    child: Option<Child>,
    port: Cell<Option<u16>>,
    url: String,
    data_dir: PathBuf,
    extra: Vec<String>,
    /// Where this process's lines start in the (appended) log file.
    log_start: usize,
}

impl Gateway {
    pub fn start(db_url: &str, data_dir: &Path, extra: &[&str]) -> Gateway {
        let mut g = Gateway {
            child: None,
            port: Cell::new(None),
            url: db_url.into(),
            data_dir: data_dir.into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log_start: 0,
        };
        g.spawn();
        g
    }

    /// The gateway's `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn spawn(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.data_dir.with_extension("log")).unwrap();
        self.log_start = log.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let child = Command::new(gateway_binary())
            .args(["serve", "--database-url", &self.url])
            .args(if self.extra.iter().any(|a| a == "--auth") { &[][..] } else { &["--auth", "none"][..] })
            .args(["--listen", &format!("127.0.0.1:{}", self.port.get().unwrap_or(0))])
            .args(["--data-dir", &self.data_dir.to_string_lossy()])
            .args(self.default_args())
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gateway");
        self.child = Some(child);
    }

    /// Test defaults (short timeouts, small chunks) unless `extra` sets the flag itself.
    fn default_args(&self) -> Vec<&'static str> {
        [("--long-poll-timeout-ms", "1500"), ("--sse-timeout-s", "5"), ("--chunk-bytes", "4096")]
            .into_iter()
            .filter(|(flag, _)| !self.extra.iter().any(|a| a == flag))
            .flat_map(|(flag, value)| [flag, value])
            .collect()
    }

    /// Waits up to `limit` for the process to end on its own; then its exit code.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        while self.exit_code().is_none() && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.exit_code()
    }

    /// The exit code, once the process has ended on its own.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap()).map(|s| s.code().unwrap_or(-1))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the gateway again after [`Gateway::terminate`] or [`Gateway::kill9`].
    pub fn spawn_again(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// The port this gateway listens on; waits (blocking) until it has bound one.
    pub fn port(&self) -> u16 {
        let started = Instant::now();
        loop {
            if let Some(port) = self.port.get().or_else(|| self.bound_port()) {
                return port;
            }
            assert!(started.elapsed() < DEADLINE, "the gateway never started listening; log: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port this process logged it listens on (serving, or standing by), once it has.
    fn bound_port(&self) -> Option<u16> {
        let log = self.log();
        // Another gateway on the same data dir appends to the same log: only ours counts.
        let ours = log.get(self.log_start..).unwrap_or_default();
        let port = gateway::log_lines::listening_address(ours, self.pid()?)?.port();
        self.port.set(Some(port));
        Some(port)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("gateway exited early with {status}; log: {}", self.log());
            }
            if self.bound_port().is_some()
                && let Ok(r) = crate::http::http().get(format!("{}/readyz", self.base())).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "gateway not ready; log: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What `/readyz` says this gateway is (`leader` or `follower`), once it is ready.
    pub async fn role(&self) -> Option<String> {
        let r = crate::http::http().get(format!("{}/readyz", self.base())).send().await.ok()?;
        let body: Value = serde_json::from_slice(&r.bytes().await.ok()?).ok()?;
        body["role"].as_str().map(str::to_string)
    }

    /// Waits until `/readyz` says this gateway is `role`.
    pub async fn becomes(&self, role: &str) {
        let started = Instant::now();
        while self.role().await.as_deref() != Some(role) {
            assert!(started.elapsed() < DEADLINE, "never became {role}; log: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/healthz` answers (a standby is alive but never ready).
    pub async fn alive(&self) {
        let started = Instant::now();
        loop {
            if self.bound_port().is_some()
                && let Ok(r) = crate::http::http().get(format!("{}/healthz", self.base())).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "no /healthz; log: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        let started = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code();
            }
            assert!(started.elapsed() < DEADLINE, "gateway did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.ready().await;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        // A failing test's gateway log is what explains the failure: CI keeps only output.
        if std::thread::panicking() {
            eprintln!("--- gateway log ({}) ---\n{}", self.data_dir.display(), self.log());
        }
    }
}
