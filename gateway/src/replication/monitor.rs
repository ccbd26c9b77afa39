//! Slot safety: watches how much WAL our slot holds on the server, keeps the slot moving on
//! a quiet database with heartbeats, and acts in stages when the WAL budget fills
//! (`--max-retained-wal`), so a stalled gateway never fills the primary's disk unnoticed.
//!
//! A slot also holds WAL while the gateway is busy and healthy: behind a transaction still
//! open on the server (its changes come at its commit), or during a transaction larger than
//! the budget (the slot moves past it only once it is stored; the server may first spend a
//! while decoding it). Stopping then frees nothing and would start that transaction over,
//! so `stop` acts only on a stalled gateway: its storage failing, or nothing received or
//! stored for [`STALLED_AFTER`]. `recreate-slot`, which does free the WAL, acts on the budget
//! alone.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::BudgetAction;
use crate::db::DbError;
use crate::progress::AckState;
use crate::status::{SlotHealth, Stage, Status};

/// How often the slot is checked.
const POLL: Duration = Duration::from_secs(5);
/// A gateway that has neither received nor stored anything for this long is stalled.
const STALLED_AFTER: Duration = Duration::from_secs(60);

/// Why the monitor ended the gateway.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "replication slot {slot:?} holds {retained} bytes of WAL, over --max-retained-wal ({budget} bytes); the gateway stops so the primary's disk does not fill. \
         The slot and the shape logs are kept: fix what stalled the gateway (its disk, its connection), raise --max-retained-wal, \
         or set --wal-budget-action recreate-slot to drop the slot instead (clients then refetch)"
    )]
    Stopped { slot: String, retained: i64, budget: u64 },
    #[error(
        "replication slot {slot:?} held {retained} bytes of WAL, over --max-retained-wal ({budget} bytes): recreating it"
    )]
    Recreate { slot: String, retained: i64, budget: u64 },
}

pub struct Monitor {
    pub db: tokio_postgres::Config,
    pub slot: String,
    pub budget: u64,
    pub action: BudgetAction,
    /// A quiet database gets a heartbeat after this long without a transaction, so the
    /// slot's position follows the server's WAL (other databases' writes included).
    pub heartbeat_after: Duration,
    pub ack: Arc<AckState>,
    pub status: Arc<Status>,
}

impl Monitor {
    /// Runs until cancelled, or until the budget is exceeded.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), BudgetError> {
        let mut client: Option<tokio_postgres::Client> = None;
        let mut heartbeats = true;
        let mut stage = Stage::Ok;
        let mut progress = self.ack.progress();
        let mut moved_at = std::time::Instant::now();
        let mut told_busy = false;
        let started = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(POLL) => {}
            }
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = crate::db::connect(&self.db).await.ok();
            }
            let Some(db) = &client else { continue };
            let health = match self.check(db).await {
                Ok(Some(h)) => h,
                Ok(None) => continue, // no slot yet: the stream creates or reports it
                Err(e) => {
                    tracing::debug!(error = %e, "slot check failed");
                    continue;
                }
            };
            // Every threshold crossed upwards is logged, also when one check jumps several.
            let crossed: Vec<Stage> = if health.stage > stage {
                Stage::ALL.into_iter().filter(|s| stage < *s && *s <= health.stage).collect()
            } else if health.stage < stage {
                vec![health.stage]
            } else {
                Vec::new()
            };
            for s in crossed {
                self.log_stage(s, health.retained_wal_bytes);
            }
            stage = health.stage;
            self.status.set_slot(health.clone());
            if std::mem::replace(&mut progress, self.ack.progress()) != progress {
                moved_at = std::time::Instant::now();
            }
            let stalled = self.status.storage_failing() || moved_at.elapsed() >= STALLED_AFTER;
            told_busy &= health.stage == Stage::Exceeded;
            if health.stage == Stage::Exceeded && self.action == BudgetAction::Stop && !stalled {
                if !std::mem::replace(&mut told_busy, true) {
                    tracing::warn!(
                        slot = %self.slot,
                        "the slot holds the whole WAL budget, but the gateway is still consuming the stream (a transaction larger than the budget, or one held open on the server): it stops only if the stream stalls"
                    );
                }
            } else if health.stage == Stage::Exceeded {
                let (slot, retained, budget) = (self.slot.clone(), health.retained_wal_bytes, self.budget);
                return Err(match self.action {
                    BudgetAction::Stop => BudgetError::Stopped { slot, retained, budget },
                    BudgetAction::RecreateSlot => BudgetError::Recreate { slot, retained, budget },
                });
            }
            let quiet = self.status.since_last_commit().unwrap_or(started.elapsed()) >= self.heartbeat_after;
            if heartbeats && quiet {
                // Non-transactional and not published: it only moves the WAL position.
                match db.execute("select pg_logical_emit_message(false, 'gateway.heartbeat', '')", &[]).await {
                    Ok(_) => metrics::counter!("gateway_heartbeats_total").increment(1),
                    Err(e) => {
                        tracing::info!(error = %DbError::from(e), "heartbeats are off: the role may not call pg_logical_emit_message");
                        heartbeats = false;
                    }
                }
            }
        }
    }

    async fn check(&self, db: &tokio_postgres::Client) -> Result<Option<SlotHealth>, DbError> {
        let Some(info) = super::slot::describe(db, &self.slot).await? else { return Ok(None) };
        let retained = info.retained_wal_bytes;
        let lag = info.current.0.saturating_sub(self.ack.durable().0) as i64;
        let health = SlotHealth {
            retained_wal_bytes: retained,
            safe_wal_bytes: info.safe_wal_bytes,
            wal_status: info.wal_status,
            lag_bytes: lag,
            lag_seconds: self.status.last_commit_age().map(|d| d.as_secs_f64()),
            seconds_since_last_commit: self.status.since_last_commit().map(|d| d.as_secs_f64()),
            stage: Stage::of(retained, self.budget),
        };
        metrics::gauge!("gateway_slot_retained_wal_bytes").set(retained as f64);
        if let Some(safe) = health.safe_wal_bytes {
            metrics::gauge!("gateway_slot_safe_wal_bytes").set(safe as f64);
        }
        metrics::gauge!("gateway_replication_lag_bytes").set(lag as f64);
        if let Some(s) = health.seconds_since_last_commit {
            metrics::gauge!("gateway_seconds_since_last_commit").set(s);
        }
        metrics::gauge!("gateway_wal_budget_stage").set(health.stage.level());
        Ok(Some(health))
    }

    fn log_stage(&self, stage: Stage, retained: i64) {
        let (slot, budget) = (&self.slot, self.budget);
        match stage {
            Stage::Ok => tracing::info!(slot, retained, budget, "retained WAL is back under half the budget"),
            Stage::Warn => tracing::warn!(slot, retained, budget, "the slot holds over half the WAL budget"),
            Stage::PauseNewShapes => tracing::warn!(
                slot,
                retained,
                budget,
                "the slot holds three quarters of the WAL budget: new shapes wait until it drains"
            ),
            Stage::Exceeded => tracing::error!(slot, retained, budget, "the slot holds the whole WAL budget"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_the_budget() {
        let gib = 1 << 30;
        assert_eq!(Stage::of(0, gib), Stage::Ok);
        assert_eq!(Stage::of(-5, gib), Stage::Ok);
        assert_eq!(Stage::of(gib as i64 / 2, gib), Stage::Warn);
        assert_eq!(Stage::of(gib as i64 * 3 / 4, gib), Stage::PauseNewShapes);
        assert_eq!(Stage::of(gib as i64, gib), Stage::Exceeded);
    }
}
