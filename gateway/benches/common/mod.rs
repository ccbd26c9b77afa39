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

/// CPU seconds (user and system) a process has used, with its reaped children's when
/// `children`; 0 once it is gone. `/proc` counts in USER_HZ, 100 per second on Linux.
fn proc_cpu_seconds(pid: u32, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
        .unwrap_or_default();
    // utime, stime, cutime, cstime are fields 14–17 of stat(5): 11–14 after the name.
    let own = fields.get(11..13).map_or(0, |f| f.iter().sum::<u64>());
    let reaped = if children { fields.get(13..15).map_or(0, |f| f.iter().sum::<u64>()) } else { 0 };
    (own + reaped) as f64 / 100.0
}

/// CPU seconds the gateway process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    proc_cpu_seconds(pid, false)
}

/// CPU seconds every PostgreSQL process on the machine has used so far, exited backends
/// included (their postmaster has reaped them).
pub fn postgres_cpu_seconds() -> f64 {
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0.0 };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(|pid| proc_cpu_seconds(pid, true))
        .sum()
}

/// Core-seconds the machine's CPUs have spent idle (or waiting for I/O) so far: what a
/// round left unused tells whether it was bound by CPU or by waiting.
pub fn machine_idle_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next().filter(|l| l.starts_with("cpu ")) else { return 0.0 };
    let jiffies: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    jiffies.get(3..5).map_or(0, |f| f.iter().sum::<u64>()) as f64 / 100.0
}
