//! The writer: commits rows at a steady rate, each to a random scope and carrying its send
//! time, and remembers which scope each id went to.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::mpsc;

use crate::record::{Recorder, now_us};
use crate::schema::scope_name;

/// Connections writing in parallel, so one slow commit does not hold the rate back.
const CONNECTIONS: usize = 16;

/// The rows written: `(id, scope)`.
pub type Written = Vec<(u64, usize)>;

/// Writes `rate` rows a second for `duration` over fresh connections to `database_url`.
pub async fn write(
    database_url: &str,
    table: &str,
    scope_column: &str,
    scopes: usize,
    rate: f64,
    duration: Duration,
    recorder: Arc<Recorder>,
) -> Result<Written, String> {
    let (tickets, rx) = mpsc::channel::<()>(1024);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let sql = format!("insert into {table} ({scope_column}, sent_us, payload) values ($1, $2, 'x') returning id");
    let mut workers = Vec::new();
    for _ in 0..CONNECTIONS {
        let db = gateway::db::connect(&gateway::db::parse_url(database_url).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?;
        let (rx, sql, recorder) = (rx.clone(), sql.clone(), recorder.clone());
        workers.push(tokio::spawn(async move {
            let statement = db.prepare(&sql).await.map_err(|e| e.to_string())?;
            let mut written = Written::new();
            while rx.lock().await.recv().await.is_some() {
                let scope = rand::rng().random_range(0..scopes);
                let sent = now_us();
                let row = db
                    .query_one(&statement, &[&scope_name(scope), &(sent as i64)])
                    .await
                    .map_err(|e| format!("insert: {e}"))?;
                let (id, answered) = (row.get::<_, i64>(0) as u64, now_us());
                recorder.committed(id, answered, answered.saturating_sub(sent));
                written.push((id, scope));
            }
            Ok::<_, String>(written)
        }));
    }
    // Tickets at the rate asked: after a stall, the backlog goes out at once.
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            if tickets.send(()).await.is_err() {
                break;
            }
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(tickets);
    let mut written = Written::new();
    for w in workers {
        written.extend(w.await.map_err(|e| e.to_string())??);
    }
    Ok(written)
}
