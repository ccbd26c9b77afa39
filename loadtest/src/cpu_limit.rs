//! A CPU limit per gateway process, as a pod's `resources.limits.cpu`: each process gets
//! its own cgroup with a CFS quota, so several gateways on one machine each bring a fixed
//! share of CPU, as gateways on separate machines would (how read capacity grows with
//! replicas can then be measured on one machine). Needs a writable cgroup file system
//! (v2, or v1's `cpu` controller), i.e. root on the machine or a privileged container.

use std::path::PathBuf;

/// The CFS period; the quota is `cores` of it.
const PERIOD_US: u64 = 100_000;

/// A process's cgroup, removed on drop (once the process has exited).
pub struct CpuLimit {
    dir: PathBuf,
}

impl CpuLimit {
    /// Moves process `pid` into a new cgroup limited to `cores` CPUs.
    pub fn apply(pid: u32, cores: f64) -> Result<CpuLimit, String> {
        let quota = ((cores * PERIOD_US as f64).round() as u64).max(1_000);
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let root = if v2 { PathBuf::from("/sys/fs/cgroup") } else { PathBuf::from("/sys/fs/cgroup/cpu") };
        let dir = root.join(format!("loadtest-gateway-{pid}"));
        let fail = |what: &str, e: std::io::Error| {
            format!("--gateway-cpu: {what} {}: {e} (needs a writable cgroup file system: run as root)", dir.display())
        };
        std::fs::create_dir(&dir).map_err(|e| fail("cannot create", e))?;
        let limit = CpuLimit { dir: dir.clone() };
        let written = if v2 {
            std::fs::write(dir.join("cpu.max"), format!("{quota} {PERIOD_US}"))
        } else {
            std::fs::write(dir.join("cpu.cfs_period_us"), PERIOD_US.to_string())
                .and_then(|()| std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()))
        };
        written.map_err(|e| fail("cannot set the quota of", e))?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| fail("cannot move the gateway into", e))?;
        Ok(limit)
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}
