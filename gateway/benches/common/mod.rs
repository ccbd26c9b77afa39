//! Shared by the benchmarks (whose PostgreSQL and gateway process come from `testkit`):
//! timing, medians and process memory.

#![allow(dead_code)]

use std::time::Duration;

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set size of a process so far, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// A `/proc/<pid>/status` field in KiB (0 once the process is gone).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Polls `/readyz` until the gateway reports a flushed position at or past `target`.
pub async fn wait_flushed(base: &str, target: shapes::offset::Lsn) {
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            let flushed: shapes::offset::Lsn = v["flushed_lsn"].as_str().unwrap().parse().unwrap();
            if flushed >= target {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Seconds `pg_recvlogical` (pgoutput, the gateway's publication) takes to consume slot
/// `slot` of the database at `url` up to `target`: the reference the ingest benchmarks
/// compare against.
pub fn recvlogical_seconds(url: &str, slot: &str, target: shapes::offset::Lsn) -> f64 {
    let recvlogical = gateway::devdb::find_binaries().unwrap().join("pg_recvlogical");
    let t = std::time::Instant::now();
    let status = std::process::Command::new(recvlogical)
        .args(["-d", url, "--slot", slot, "--start", "--no-loop"])
        .args(["-o", "proto_version=1", "-o", "publication_names=gateway", "--endpos", &target.to_string()])
        .args(["-f", "/dev/null"])
        .status()
        .unwrap();
    assert!(status.success(), "pg_recvlogical failed");
    secs(t.elapsed())
}
