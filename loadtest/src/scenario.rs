//! One run: subscribers connect and catch up, the writer writes for the duration, the last
//! events drain, then every subscriber's events are checked against what was written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::args::{Client, Load, Mode, RunArgs, Scenario};
use crate::memberships::Members;
use crate::official::{self, Official};
use crate::procfs::{CpuMeter, StealMeter, rss_mb};
use crate::record::Seen;
use crate::record::{Recorder, Sample};
use crate::report::{self, Completeness, Summary};
use crate::schema::{scope_name, user_name};
use crate::subscriber::Subscriber;

/// Subscribers taking their first snapshot at the same time.
const CONNECTING: usize = 256;
/// Most time for every subscriber to catch up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Setup(String),
    #[error(
        "{connected} of {wanted} subscribers caught up within {limit:?}; the gateway's log says why (with `local`: gateway.log in the results folder)"
    )]
    CatchUp { connected: usize, wanted: usize, limit: Duration },
    #[error("writing: {0}")]
    Write(String),
    #[error("writing the report to {path}: {source}")]
    Report { path: String, source: std::io::Error },
}

/// Runs the load against `args.gateway`; `gateway_pid` adds its memory and CPU.
pub async fn run(args: RunArgs, gateway_pid: Option<u32>) -> Result<Summary, RunError> {
    let load = args.load.clone();
    if load.scopes == 0 || load.subscribers == 0 || load.write_rate <= 0.0 {
        return Err(RunError::Setup("--scopes, --subscribers and --write-rate must be above 0".into()));
    }
    let official = load.client == Client::Official;
    if official && (load.scenario != Scenario::Scopes || load.mode == Mode::Mixed) {
        return Err(RunError::Setup(
            "--client official runs the scopes scenario over --mode sse or long-poll; drop --scenario or --mode mixed"
                .into(),
        ));
    }
    let open_files = gateway::limits::raise_open_files();
    if open_files.is_some_and(|n| (n as usize) < load.subscribers + load.idle_connections + 64) {
        eprintln!(
            "loadtest: the open-files limit is {open_files:?}, below one socket per subscriber: raise `ulimit -n` (hard limit) or expect connection errors"
        );
    }
    let db =
        gateway::db::connect(&gateway::db::parse_url(&args.database_url).map_err(|e| RunError::Setup(e.to_string()))?)
            .await
            .map_err(|e| RunError::Setup(e.to_string()))?;
    let first_id = crate::schema::prepare(&db, &load)
        .await
        .map_err(|e| RunError::Setup(format!("creating {}: {e}", load.table)))?;
    // Users (one subscriber each) and one more with no project, for the idle connections.
    let members = match load.scenario {
        Scenario::Scopes => None,
        Scenario::Memberships => Some(Arc::new(
            Members::seed(&db, &load, load.subscribers, 1)
                .await
                .map_err(|e| RunError::Setup(format!("seeding memberships: {e}")))?,
        )),
    };
    let bases = load.through.clone().unwrap_or_else(|| args.gateway.clone());
    let shape_urls: Vec<String> =
        bases.split(',').map(|b| format!("{}/v1/shape", b.trim().trim_end_matches('/'))).collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| RunError::Setup(e.to_string()))?;

    let recorder = Arc::new(Recorder::default());
    let stop = CancellationToken::new();
    let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    let expires = SystemTime::now() + load.duration + CATCH_UP_LIMIT + Duration::from_secs(3600);
    // One more identity than written to: the idle connections' (it never gets a row).
    let identities = if members.is_some() { load.subscribers } else { load.scopes };
    let tokens: Vec<String> =
        (0..=identities).map(|i| token(&args.jwt_secret, &load, i, expires)).collect::<Result<_, _>>()?;
    let subscriber = |identity: usize, idle: bool, sse: bool, shape_url: &String| Subscriber {
        identity,
        idle,
        members: members.clone(),
        scope_column: load.scope_column.clone(),
        token: tokens[identity].clone(),
        sse,
        shape_url: shape_url.clone(),
        table: load.table.clone(),
        first_id,
    };
    let progress = progress_bar();
    let started = Instant::now();
    // The official client's subscribers, when asked for, in place of ours (not the idle ones).
    let officials = official.then(|| {
        let subscribers = (0..load.subscribers)
            .map(|i| Official {
                identity: i % load.scopes,
                token: tokens[i % load.scopes].clone(),
                shape_url: shape_urls[i % shape_urls.len()].clone(),
            })
            .collect();
        official::spawn(subscribers, &load.table, load.mode == Mode::Sse, first_id, recorder.clone(), stop.clone())
    });
    let officials = officials.transpose().map_err(RunError::Setup)?;
    // The tester's CPU is its own and, with the official client, Node's.
    let tester: Vec<u32> = std::iter::once(std::process::id()).chain(officials.as_ref().and_then(|o| o.0)).collect();
    let officials = officials.map(|o| o.1);
    let first_ours = if official { load.subscribers } else { 0 };
    let subscribers: Vec<_> = (first_ours..load.subscribers + load.idle_connections)
        .map(|i| {
            let idle = i >= load.subscribers;
            let identity = match (idle, &members) {
                (true, _) => identities,
                (false, Some(_)) => i,
                (false, None) => i % load.scopes,
            };
            let sse = idle
                || match load.mode {
                    Mode::Sse => true,
                    Mode::LongPoll => false,
                    Mode::Mixed => i % 2 == 0,
                };
            let sub = subscriber(identity, idle, sse, &shape_urls[i % shape_urls.len()]);
            tokio::spawn(sub.run(http.clone(), recorder.clone(), connecting.clone(), stop.clone()))
        })
        .collect();
    let sampler = tokio::spawn(sample(recorder.clone(), args.gateway.clone(), gateway_pid, tester, stop.clone()));

    // Catch-up: every subscriber has its snapshot and is live, and the idle ones too.
    while recorder.up_to_date.load(Ordering::Relaxed) < load.subscribers
        || recorder.idle_connected.load(Ordering::Relaxed) < load.idle_connections
    {
        let up = recorder.up_to_date.load(Ordering::Relaxed);
        let idle = recorder.idle_connected.load(Ordering::Relaxed);
        progress.set_message(format!(
            "connecting: {up}/{} subscribers up to date, {idle}/{} idle connections",
            load.subscribers, load.idle_connections
        ));
        if started.elapsed() > CATCH_UP_LIMIT {
            stop.cancel();
            progress.finish_and_clear();
            return Err(RunError::CatchUp { connected: up, wanted: load.subscribers, limit: CATCH_UP_LIMIT });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let catch_up = started.elapsed();

    // The writes, with progress.
    recorder.start_writes();
    let writer = tokio::spawn({
        let (url, load, recorder) = (args.database_url.clone(), load.clone(), recorder.clone());
        async move {
            let (table, column) = (&load.table, &load.scope_column);
            crate::writer::write(&url, table, column, load.scopes, load.write_rate, load.duration, recorder).await
        }
    });
    let changer = members.clone().map(|m| {
        let (url, load) = (args.database_url.clone(), load.clone());
        tokio::spawn(async move { m.change(&url, load.subscribers, load.membership_rate, load.duration).await })
    });
    let writing = Instant::now();
    while !writer.is_finished() || changer.as_ref().is_some_and(|c| !c.is_finished()) {
        progress.set_message(format!(
            "writing {:.0}/{:.0}s: {} connected, {} events, p99 {}",
            writing.elapsed().as_secs_f64(),
            load.duration.as_secs_f64(),
            recorder.connected.load(Ordering::Relaxed),
            recorder.delivered.load(Ordering::Relaxed),
            recorder.recent_quantile_ms(0.99).map_or("–".into(), |ms| format!("{ms:.1} ms"))
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let written = writer.await.map_err(|e| RunError::Write(e.to_string()))?.map_err(RunError::Write)?;
    if let Some(changer) = changer {
        changer.await.map_err(|e| RunError::Write(e.to_string()))?.map_err(RunError::Write)?;
    }
    let write_secs = writing.elapsed().as_secs_f64();

    // Drain: until every expected event arrived (every user holds its rows), or the limit.
    let owed = match &members {
        None => Owed::Events(expected_events(&load, &written)),
        Some(m) => Owed::Rows(m.clone(), m.expected(&db, &load.table).await.map_err(RunError::Write)?),
    };
    let draining = Instant::now();
    let mut unsettled = None;
    while draining.elapsed() < load.drain {
        let (done, wanted, what) = match &owed {
            Owed::Rows(m, rows) => (m.settled(rows), rows.len(), "users hold their rows"),
            Owed::Events(n) => (recorder.delivered.load(Ordering::Relaxed) as usize, *n as usize, "events"),
        };
        if done >= wanted {
            unsettled = None;
            break;
        }
        unsettled = Some(format!("the drain ended after {:?} with {done}/{wanted} {what} (--drain)", load.drain));
        progress.set_message(format!("draining: {done}/{wanted} {what}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A little longer, so duplicates that would follow show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let mut seen: Vec<Seen> = Vec::with_capacity(load.subscribers + load.idle_connections);
    if let Some(officials) = officials {
        seen.extend(officials.await.map_err(|e| RunError::Setup(e.to_string()))?);
    }
    for s in subscribers {
        seen.push(s.await.map_err(|e| RunError::Setup(e.to_string()))?);
    }
    let _ = sampler.await;
    progress.finish_and_clear();

    // A few users at fault, read afresh: is their shape's log wrong, or was its delivery?
    if let Owed::Rows(_, rows) = &owed {
        for user in Members::faulty(rows, &seen).into_iter().take(3) {
            let verdict = match subscriber(user, false, false, &shape_urls[0]).read_once(&http).await {
                Ok((handle, fresh)) if fresh == rows[user] => {
                    format!("(handle {handle}) holds the right rows: the log is right, its live delivery was not")
                }
                Ok((handle, _)) => format!("(handle {handle}) lacks or keeps rows too: the shape's log is wrong"),
                Err(e) => format!("could not be read ({e})"),
            };
            eprintln!("loadtest: {}'s shape, read afresh, {verdict}", user_name(user));
        }
    }
    let (completeness, expected, held) = match &owed {
        Owed::Rows(m, rows) => (
            m.check(rows, &seen),
            rows.iter().map(|r| r.len() as u64).sum(),
            Some(seen.iter().map(|s| s.held.len() as u64).sum()),
        ),
        Owed::Events(n) => (check(&written, &seen), *n, None),
    };
    let recorded = recorder.take();
    let summary = report::summarize(report::Inputs {
        load: &load,
        recorder: &recorder,
        recorded: &recorded,
        catch_up,
        write_secs,
        written: written.len() as u64,
        expected,
        held,
        membership_changes: members.as_ref().map(|m| m.changes()),
        completeness,
        connects: seen.iter().filter_map(|s| s.connect).collect(),
        unsettled,
    });
    let out = load.out.clone().unwrap_or_else(default_out);
    report::write(&out, &summary, &recorded)
        .map_err(|source| RunError::Report { path: out.display().to_string(), source })?;
    report::print(&summary, &out);
    Ok(summary)
}

/// What the subscribers are owed once the writes end.
enum Owed {
    /// Events: each row written × the subscribers of its scope.
    Events(u64),
    /// The ids each user should hold, by PostgreSQL (memberships scenario).
    Rows(Arc<Members>, Vec<HashSet<u64>>),
}

/// Each row written × the subscribers of its scope.
fn expected_events(load: &Load, written: &[(u64, usize)]) -> u64 {
    let mut per_scope = vec![0u64; load.scopes];
    for &(_, scope) in written {
        per_scope[scope] += 1;
    }
    let subscribers_per_scope =
        |s: usize| (load.subscribers / load.scopes + usize::from(s < load.subscribers % load.scopes)) as u64;
    per_scope.iter().enumerate().map(|(s, n)| n * subscribers_per_scope(s)).sum()
}

fn check(written: &[(u64, usize)], seen: &[Seen]) -> Completeness {
    let mut by_scope: HashMap<usize, Vec<u64>> = HashMap::new();
    let scope_of: HashMap<u64, usize> = written.iter().copied().collect();
    for &(id, scope) in written {
        by_scope.entry(scope).or_default().push(id);
    }
    let mut c = Completeness::default();
    for s in seen {
        let mut ids = s.ids.clone();
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        c.duplicated += (before - ids.len()) as u64;
        c.foreign += ids.iter().filter(|id| scope_of.get(id).is_some_and(|&sc| sc != s.identity)).count() as u64;
        let mine = by_scope.get(&s.identity).map_or(&[][..], Vec::as_slice);
        c.missing += mine.iter().filter(|id| ids.binary_search(id).is_err()).count() as u64;
    }
    c
}

/// One sample a second of connected subscribers and the gateway's memory, CPU and lag.
async fn sample(recorder: Arc<Recorder>, gateway: String, pid: Option<u32>, tester: Vec<u32>, stop: CancellationToken) {
    let http = reqwest::Client::new();
    let mut cpu = pid.map(CpuMeter::new);
    let mut own_cpu = CpuMeter::of(tester);
    let mut steal = StealMeter::default();
    let metrics = format!("{}/metrics", gateway.trim_end_matches('/'));
    while !stop.is_cancelled() {
        let lag = match http.get(&metrics).send().await {
            Ok(r) => r.text().await.ok().and_then(|body| {
                body.lines()
                    .find_map(|l| l.strip_prefix("gateway_replication_lag_seconds "))
                    .and_then(|v| v.trim().parse().ok())
            }),
            Err(_) => None,
        };
        recorder.sample(Sample {
            t: 0.0,
            connected: recorder.connected.load(Ordering::Relaxed),
            idle_connected: recorder.idle_connected.load(Ordering::Relaxed),
            gateway_rss_mb: pid.and_then(rss_mb),
            gateway_cpu_percent: cpu.as_mut().and_then(CpuMeter::percent),
            tester_cpu_percent: own_cpu.percent(),
            replication_lag_s: lag,
            machine_steal_percent: steal.percent(),
        });
        tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = stop.cancelled() => {} }
    }
}

/// The token of identity `i`: scope `i` (its claim named like the scope column), or user `i`.
fn token(secret: &str, load: &Load, i: usize, expires: SystemTime) -> Result<String, RunError> {
    let exp = expires.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let claims = match load.scenario {
        Scenario::Scopes => {
            serde_json::json!({ &load.scope_column: scope_name(i), "sub": format!("loadtest-{i}"), "exp": exp })
        }
        Scenario::Memberships => serde_json::json!({ "sub": user_name(i), "exp": exp }),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| RunError::Setup(format!("minting tokens: {e}")))
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// `loadtest-results/<unix time>`.
pub fn default_out() -> std::path::PathBuf {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    std::path::PathBuf::from("loadtest-results").join(now.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(scope: usize, ids: &[u64]) -> Seen {
        Seen { identity: scope, ids: ids.to_vec(), ..Seen::default() }
    }

    #[test]
    fn completeness_counts_missing_duplicated_and_foreign_events() {
        let written = [(1, 0), (2, 1), (3, 0)];
        let all_good = [seen(0, &[1, 3]), seen(1, &[2])];
        assert_eq!(check(&written, &all_good).missing + check(&written, &all_good).duplicated, 0);
        let bad = [seen(0, &[1, 1, 2]), seen(1, &[])];
        let c = check(&written, &bad);
        assert_eq!((c.missing, c.duplicated, c.foreign), (2, 1, 1), "3 and 2 missing, 1 twice, 2 foreign");
    }
}
