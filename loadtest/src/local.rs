//! `loadtest local`: a throwaway PostgreSQL (the gateway's `devdb`, durable commits so
//! latencies are real) and a gateway process with a rule scoping the table (or several on
//! one data dir: one streams, the others serve reads), then the run.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway::devdb::{DevOptions, DevPostgres};

use crate::args::{LocalArgs, RunArgs};
use crate::cpu_limit::CpuLimit;
use crate::report::Summary;
use crate::scenario::{self, RunError};

/// A gateway process, stopped on drop (then its CPU limit's cgroup goes).
struct GatewayProcess(Child, Option<CpuLimit>);

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
        self.1.take();
    }
}

pub async fn run(args: LocalArgs) -> Result<Summary, RunError> {
    let bin = args.gateway_bin.clone().unwrap_or_else(beside_this_binary);
    if !bin.is_file() {
        return Err(RunError::Setup(format!(
            "no gateway binary at {}: build it (`cargo build --release -p gateway`) or pass --gateway-bin",
            bin.display()
        )));
    }
    let options = DevOptions { fsync: true, settings: vec![("max_connections".into(), "200".into())] };
    let pg = tokio::task::spawn_blocking(move || DevPostgres::start(&options))
        .await
        .map_err(|e| RunError::Setup(e.to_string()))?
        .map_err(|e| RunError::Setup(format!("starting PostgreSQL: {e}")))?;
    let url = pg.url("postgres");
    let load = &args.load;
    let rules = pg.root().join("loadtest.toml");
    std::fs::write(&rules, crate::schema::rule(load)).map_err(|e| RunError::Setup(e.to_string()))?;
    // The table must exist before the gateway checks its rules.
    let db = gateway::db::connect(&gateway::db::parse_url(&url).map_err(|e| RunError::Setup(e.to_string()))?)
        .await
        .map_err(|e| RunError::Setup(e.to_string()))?;
    crate::schema::prepare(&db, load).await.map_err(|e| RunError::Setup(format!("creating {}: {e}", load.table)))?;
    drop(db);
    let secret = format!("{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>());
    let log_path = pg.root().join("gateway.log");
    // The first streams; the others, on its data dir, serve reads of its shapes.
    let mut gateways = Vec::new();
    let mut bases = Vec::new();
    for _ in 0..args.gateways {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| RunError::Setup(e.to_string()))?;
        // Port 0, then the port the gateway logs: a port picked here could be taken meanwhile.
        let child = Command::new(&bin)
            .args(["serve", "--database-url", &url, "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(pg.root().join("gateway-data"))
            .args(["--auth", "jwt", "--jwt-secret", &secret, "--config"])
            .arg(&rules)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| RunError::Setup(format!("starting {}: {e}", bin.display())))?;
        let limit = match args.gateway_cpu {
            Some(cores) => Some(CpuLimit::apply(child.id(), cores).map_err(RunError::Setup)?),
            None => None,
        };
        let gateway = GatewayProcess(child, limit);
        let base = wait_ready(&log_path, gateway.0.id()).await.map_err(|why| {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            RunError::Setup(format!("{why}; its log:\n{log}"))
        })?;
        gateways.push(gateway);
        bases.push(base);
    }
    let base = bases[0].clone();
    let mut load = args.load.clone();
    if bases.len() > 1 {
        load.through = Some(bases.join(","));
    }
    let out = load.out.get_or_insert_with(scenario::default_out).clone();
    let run = RunArgs { gateway: base.clone(), database_url: url, jwt_secret: secret, load };
    let result = scenario::run(run, Some(gateways[0].0.id())).await;
    // Its metrics as they end (the fan-out's stage times say where latency went).
    let metrics = match reqwest::get(format!("{base}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => format!("# the gateway's metrics could not be read: {e}\n"),
    };
    drop(gateways);
    // The throwaway cluster goes with its folder: the gateway's log stays with the results.
    let kept = std::fs::create_dir_all(&out)
        .and_then(|()| std::fs::copy(&log_path, out.join("gateway.log")))
        .and_then(|_| std::fs::write(out.join("gateway-metrics.txt"), metrics));
    if let Err(e) = kept {
        eprintln!("loadtest: could not keep the gateway's log and metrics in {}: {e}", out.display());
    }
    drop(pg);
    result
}

/// `gateway` in the folder of this binary (cargo builds both into the same target folder).
fn beside_this_binary() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| Some(p.parent()?.join("gateway"))).unwrap_or_else(|| "gateway".into())
}

/// Waits until the gateway `pid` logged its address to `log` and answers `/readyz`; its
/// base URL.
async fn wait_ready(log: &std::path::Path, pid: u32) -> Result<String, String> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = gateway::log_lines::listening_address(&text, pid) {
            let base = format!("http://{addr}");
            if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(base);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the gateway did not become ready within 60 s".into())
}
