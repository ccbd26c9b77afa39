//! A local process's memory and CPU, and the machine's CPU lost to its hypervisor, from
//! `/proc`.

use std::time::Instant;

/// Resident set size in MiB.
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time used (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU use of one or more processes between calls, as a percentage of one core.
#[derive(Debug)]
pub struct CpuMeter {
    pids: Vec<u32>,
    last: Option<(Instant, u64)>,
}

impl CpuMeter {
    pub fn new(pid: u32) -> CpuMeter {
        CpuMeter::of(vec![pid])
    }

    /// The processes' CPU together (a process and the helpers it started).
    pub fn of(pids: Vec<u32>) -> CpuMeter {
        CpuMeter { pids, last: None }
    }

    pub fn percent(&mut self) -> Option<f64> {
        // USER_HZ, the unit of /proc/PID/stat, is 100 on every Linux architecture.
        const TICKS_PER_SECOND: f64 = 100.0;
        let ticks = self.pids.iter().map(|&pid| cpu_ticks(pid)).sum::<Option<u64>>()?;
        let now = (Instant::now(), ticks);
        let previous = self.last.replace(now)?;
        let seconds = (now.0 - previous.0).as_secs_f64();
        (seconds > 0.0).then(|| (now.1 - previous.1) as f64 / TICKS_PER_SECOND / seconds * 100.0)
    }
}

/// The share of the machine's CPU time its hypervisor took between calls (`steal` in
/// `/proc/stat`), in percent: a virtual machine whose host takes it back runs everything
/// slower, and a run's latency says so.
#[derive(Debug, Default)]
pub struct StealMeter {
    last: Option<(u64, u64)>,
}

impl StealMeter {
    pub fn percent(&mut self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> =
            stat.lines().next()?.strip_prefix("cpu ")?.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal (guest time is counted in user).
        let now = (*ticks.get(7)?, ticks.iter().take(8).sum::<u64>());
        let (steal, total) = self.last.replace(now)?;
        let elapsed = now.1.checked_sub(total).filter(|t| *t > 0)?;
        Some(now.0.saturating_sub(steal) as f64 / elapsed as f64 * 100.0)
    }
}
