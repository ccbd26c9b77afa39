//! What the run measures as it goes: latencies (overall and per second), delivered events,
//! connection counters, and one sample per second of the gateway's state.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

/// Latencies in microseconds, up to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Microseconds since the epoch: the clock both the writer and the subscribers read.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// What one subscriber saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Its token's: scope `identity`, or user `identity` in the memberships scenario.
    pub identity: usize,
    /// Ids of the rows written during the run, in arrival order (scopes scenario).
    pub ids: Vec<u64>,
    /// Time from start to the first `up-to-date`.
    pub connect: Option<Duration>,
    /// Memberships scenario: the rows held now (id → project), inserts of a row already
    /// held, and the projects of every row inserted.
    pub held: HashMap<u64, usize>,
    pub duplicated: u64,
    pub projects: HashSet<usize>,
}

/// One second of the run (from the first write).
#[derive(Clone, Debug)]
pub struct Second {
    pub delivered: u64,
    pub latency: Histogram<u64>,
    /// Memberships scenario: joins whose rows arrived, join → first row.
    pub move_in: Histogram<u64>,
    /// Writes whose commit returned: send → PostgreSQL's answer.
    pub commit: Histogram<u64>,
}

/// The state sampled once a second.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    /// Seconds since the first write (negative while subscribers connect).
    pub t: f64,
    pub connected: usize,
    pub idle_connected: usize,
    pub gateway_rss_mb: Option<f64>,
    pub gateway_cpu_percent: Option<f64>,
    /// The load tester's own CPU: on a shared machine it competes with the gateway.
    pub tester_cpu_percent: Option<f64>,
    pub replication_lag_s: Option<f64>,
    /// The machine's CPU its hypervisor took, in percent of all of it.
    pub machine_steal_percent: Option<f64>,
}

/// The timeline of a finished run.
#[derive(Debug)]
pub struct Recorded {
    pub total: Histogram<u64>,
    pub move_in_total: Histogram<u64>,
    pub commit_total: Histogram<u64>,
    pub delivery_total: Histogram<u64>,
    pub seconds: Vec<Second>,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Default)]
pub struct Recorder {
    /// When the first write was sent.
    writes_started: OnceLock<Instant>,
    timeline: Mutex<Timeline>,
    /// Subscribers whose first `up-to-date` arrived.
    pub up_to_date: AtomicUsize,
    /// Subscribers with a live connection open now.
    pub connected: AtomicUsize,
    /// Idle connections (`--idle-connections`) up to date and open now.
    pub idle_connected: AtomicUsize,
    pub delivered: AtomicU64,
    pub reconnects: AtomicU64,
    /// 503 answers with `Retry-After` (backpressure), retried after the wait.
    pub busy: AtomicU64,
    pub http_errors: AtomicU64,
    /// The first few distinct errors, to say what failed.
    errors: Mutex<Vec<String>>,
    /// When each written row's commit was answered (µs), by id: what delivery is timed from.
    commits_answered: Mutex<HashMap<u64, u64>>,
}

#[derive(Debug, Default)]
struct Timeline {
    total: Option<Histogram<u64>>,
    move_in_total: Option<Histogram<u64>>,
    commit_total: Option<Histogram<u64>>,
    delivery_total: Option<Histogram<u64>>,
    seconds: Vec<Second>,
    samples: Vec<(Instant, Sample)>,
}

impl Recorder {
    pub fn start_writes(&self) {
        let _ = self.writes_started.set(Instant::now());
    }

    /// Seconds since the first write (negative before).
    pub fn clock(&self, at: Instant) -> f64 {
        self.writes_started.get().map_or(
            0.0,
            |s| {
                if at >= *s { (at - *s).as_secs_f64() } else { -(*s - at).as_secs_f64() }
            },
        )
    }

    /// Events delivered together, each `latency_us` after it was sent (one lock per batch),
    /// and the rows' `(id, received µs)`: each is also timed from its commit's answer, 0 when
    /// the row arrived first (the answer and the row race; the writer records the answer).
    pub fn delivered(&self, latencies_us: &[u64], received: &[(u64, u64)]) {
        if latencies_us.is_empty() {
            return;
        }
        let deliveries: Vec<u64> = {
            let commits = self.commits_answered.lock().unwrap();
            received.iter().map(|(id, at)| commits.get(id).map_or(0, |c| at.saturating_sub(*c))).collect()
        };
        self.delivered.fetch_add(latencies_us.len() as u64, Ordering::Relaxed);
        let mut t = self.timeline.lock().unwrap();
        let second = self.second(&mut t);
        for &latency in latencies_us {
            let value = latency.max(1);
            let _ = t.total.get_or_insert_with(histogram).record(value);
            let s = &mut t.seconds[second];
            s.delivered += 1;
            let _ = s.latency.record(value);
        }
        for delivery in deliveries {
            let _ = t.delivery_total.get_or_insert_with(histogram).record(delivery.max(1));
        }
    }

    /// Joins whose first rows arrived together, each `latency_us` after the join was sent.
    pub fn moved_in(&self, latencies_us: &[u64]) {
        if latencies_us.is_empty() {
            return;
        }
        let mut t = self.timeline.lock().unwrap();
        let second = self.second(&mut t);
        for &latency in latencies_us {
            let value = latency.max(1);
            let _ = t.move_in_total.get_or_insert_with(histogram).record(value);
            let _ = t.seconds[second].move_in.record(value);
        }
    }

    /// Row `id`'s commit was answered at `answered_us`, `latency_us` after it was sent:
    /// PostgreSQL's part of the latency, which the gateway cannot make shorter.
    pub fn committed(&self, id: u64, answered_us: u64, latency_us: u64) {
        self.commits_answered.lock().unwrap().insert(id, answered_us);
        let mut t = self.timeline.lock().unwrap();
        let second = self.second(&mut t);
        let value = latency_us.max(1);
        let _ = t.commit_total.get_or_insert_with(histogram).record(value);
        let _ = t.seconds[second].commit.record(value);
    }

    /// The index of the current second in `t.seconds`, which grows to hold it.
    fn second(&self, t: &mut Timeline) -> usize {
        let second = self.clock(Instant::now()).max(0.0) as usize;
        while t.seconds.len() <= second {
            t.seconds.push(Second { delivered: 0, latency: histogram(), move_in: histogram(), commit: histogram() });
        }
        second
    }

    /// A failed request.
    pub fn error(&self, what: String) {
        self.http_errors.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 10 && !errors.contains(&what) {
            errors.push(what);
        }
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// A sample taken now; its `t` is set when the run is taken.
    pub fn sample(&self, sample: Sample) {
        self.timeline.lock().unwrap().samples.push((Instant::now(), sample));
    }

    /// The latency of the last whole second, at `q`, in ms.
    pub fn recent_quantile_ms(&self, q: f64) -> Option<f64> {
        let t = self.timeline.lock().unwrap();
        let n = t.seconds.len();
        let s = t.seconds.get(n.checked_sub(2)?)?;
        (s.delivered > 0).then(|| s.latency.value_at_quantile(q) as f64 / 1000.0)
    }

    /// Everything recorded, for the report.
    pub fn take(&self) -> Recorded {
        let mut t = self.timeline.lock().unwrap();
        Recorded {
            total: t.total.take().unwrap_or_else(histogram),
            move_in_total: t.move_in_total.take().unwrap_or_else(histogram),
            commit_total: t.commit_total.take().unwrap_or_else(histogram),
            delivery_total: t.delivery_total.take().unwrap_or_else(histogram),
            seconds: std::mem::take(&mut t.seconds),
            samples: std::mem::take(&mut t.samples)
                .into_iter()
                .map(|(at, sample)| Sample { t: self.clock(at), ..sample })
                .collect(),
        }
    }
}
