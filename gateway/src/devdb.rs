//! A throwaway PostgreSQL with `wal_level=logical` on a free loopback port, started from the
//! locally installed server binaries. Used by `gateway demo`, the load tester and the tests.
//! It lives in a temporary directory that is removed when the handle is dropped.
//!
//! PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum DevDbError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found; install them with \
         `apt-get install -y postgresql` (Debian/Ubuntu) or set PG_BIN to their directory"
    )]
    BinariesMissing,
    #[error(
        "running as root, but there is no `postgres` user to run PostgreSQL as; create one with `useradd -r postgres`"
    )]
    NoPostgresUser,
    #[error("{step} failed: {detail}")]
    Step { step: &'static str, detail: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Options for [`DevPostgres::start`].
#[derive(Clone, Debug, Default)]
pub struct DevOptions {
    /// `fsync=off` makes test clusters much faster; a crash of the machine loses them anyway.
    pub fsync: bool,
    /// Extra `name = value` settings.
    pub settings: Vec<(String, String)>,
}

/// A running throwaway cluster.
#[derive(Debug)]
pub struct DevPostgres {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
}

/// Finds the newest installed PostgreSQL server binaries.
pub fn find_binaries() -> Result<PathBuf, DevDbError> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output();
    if let Ok(out) = out {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    Err(DevDbError::BinariesMissing)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl DevPostgres {
    pub fn start(options: &DevOptions) -> Result<DevPostgres, DevDbError> {
        let bin = find_binaries()?;
        let run_as = if rustix::process::geteuid().is_root() { Some("postgres".to_string()) } else { None };
        let root =
            std::env::temp_dir().join(format!("gateway-pg-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&root)?;
        let mut db = DevPostgres { root, bin, port: free_port()?, run_as };
        db.own_root()?;
        let template = db.template()?;
        db.copy_tree(&template, &db.data())?;
        // A free port can be taken by another process before the server binds it (tests
        // start many servers at once): then another port.
        let mut attempts = 0;
        loop {
            db.write_conf(options)?;
            match db.pg_ctl_start() {
                Err(DevDbError::Step { detail, .. }) if detail.contains("Address already in use") && attempts < 5 => {
                    attempts += 1;
                    db.port = free_port()?;
                }
                result => return result.map(|()| db),
            }
        }
    }

    /// A freshly initialized data directory to copy: `initdb` costs over a second of CPU, a
    /// copy a fraction of it, and every test and demo starts a cluster. One per PostgreSQL
    /// version and user in the temp dir, made once (renamed into place whole, so a racing
    /// or interrupted maker leaves no half of one) and shared by later runs.
    fn template(&self) -> Result<PathBuf, DevDbError> {
        let out = self.command("initdb").arg("--version").output()?;
        let version: String = String::from_utf8_lossy(&out.stdout)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' })
            .collect();
        let user = self.run_as.as_deref().unwrap_or("self");
        let template = std::env::temp_dir().join(format!("gateway-pg-template-{user}-{}", version.trim_matches('_')));
        if template.join("PG_VERSION").exists() {
            return Ok(template);
        }
        let making = self.root.join("template");
        self.run(
            "initdb",
            &[
                "-D",
                &making.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
                "--no-sync",
            ],
        )?;
        // Another process may have made it meanwhile: theirs is as good.
        if std::fs::rename(&making, &template).is_err() {
            std::fs::remove_dir_all(&making)?;
        }
        Ok(template)
    }

    /// Copies a data directory, keeping its owner and modes (PostgreSQL checks both).
    fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), DevDbError> {
        succeeded("cp", Command::new("cp").arg("-a").arg(from).arg(to))
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn own_root(&self) -> Result<(), DevDbError> {
        if let Some(user) = &self.run_as {
            let out = Command::new("id").args(["-u", user]).output()?;
            let uid: u32 =
                String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| DevDbError::NoPostgresUser)?;
            let out = Command::new("id").args(["-g", user]).output()?;
            let gid: u32 =
                String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| DevDbError::NoPostgresUser)?;
            std::os::unix::fs::chown(&self.root, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run(&self, step: &'static str, args: &[&str]) -> Result<(), DevDbError> {
        succeeded(step, self.command(step).args(args))
    }

    fn write_conf(&self, options: &DevOptions) -> Result<(), DevDbError> {
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nwal_level = logical\n\
             max_replication_slots = 64\nmax_wal_senders = 64\nmax_connections = 200\nfsync = {}\n\
             synchronous_commit = {}\nfull_page_writes = {}\nshared_buffers = '256MB'\nmax_wal_size = '4GB'\n\
             wal_sender_timeout = '60s'\nlogging_collector = off\nlog_min_messages = warning\n",
            self.port,
            self.root.display(),
            on_off(options.fsync),
            on_off(options.fsync),
            on_off(options.fsync),
        );
        for (k, v) in &options.settings {
            conf.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        let path = self.data().join("postgresql.auto.conf");
        std::fs::write(&path, conf)?;
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<(), DevDbError> {
        let log = self.root.join("server.log");
        self.run(
            "pg_ctl",
            &["-D", &self.data().to_string_lossy(), "-l", &log.to_string_lossy(), "-w", "-t", "60", "start"],
        )
        .map_err(|e| match e {
            DevDbError::Step { step, detail } => DevDbError::Step {
                step,
                detail: format!("{detail}\n{}", std::fs::read_to_string(&log).unwrap_or_default()),
            },
            e => e,
        })
    }

    /// Stops the server: `fast` waits for clients to be told, `immediate` is a crash.
    pub fn stop(&self, mode: StopMode) -> Result<(), DevDbError> {
        self.run("pg_ctl", &["-D", &self.data().to_string_lossy(), "-w", "-t", "60", "stop", "-m", mode.as_str()])
    }

    pub fn restart(&self, mode: StopMode) -> Result<(), DevDbError> {
        self.stop(mode)?;
        self.pg_ctl_start()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Runs `command`; a failure is `step`'s error with what it printed on stderr.
fn succeeded(step: &'static str, command: &mut Command) -> Result<(), DevDbError> {
    let out = command.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DevDbError::Step { step, detail: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

#[derive(Clone, Copy, Debug)]
pub enum StopMode {
    Fast,
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

impl Drop for DevPostgres {
    fn drop(&mut self) {
        let _ = self.stop(StopMode::Immediate);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
