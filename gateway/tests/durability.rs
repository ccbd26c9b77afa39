//! Crashes and restarts: nothing missing, nothing duplicated.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gateway::devdb::StopMode;

use testkit::{DEADLINE, Env, Follower, ITEMS, current_wal, oracle, slot_confirmed};

/// Inserts and updates continuously until stopped; returns how many transactions ran.
pub fn writer(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let db = testkit::connect(&url).await;
        let n = AtomicU64::new(0);
        while !stop.load(Ordering::Relaxed) {
            let i = n.fetch_add(1, Ordering::Relaxed);
            let sql = format!(
                "begin; insert into items values ({id}, 'o' || ({id} % 2), 'w', 0); update items set n = n + 1 where id = {old}; commit;",
                id = 1000 + i,
                old = 1 + i % 50
            );
            if db.batch_execute(&sql).await.is_err() {
                break;
            }
        }
        n.load(Ordering::Relaxed)
    })
}

/// 50 items, a gateway, and two synced followers: of all items, and of org `o1`'s.
async fn items_followed() -> (Env, testkit::Gateway, Follower, Follower) {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o' || (i % 2), 't', 0 from generate_series(1, 50) i").await;
    let gw = env.ready_gateway().await;
    let mut all = Follower::new(&gw, "table=items");
    let mut odd = Follower::new(&gw, "table=items&where=org%3D%27o1%27");
    all.sync().await;
    odd.sync().await;
    (env, gw, all, odd)
}

#[tokio::test]
async fn kill_9_mid_stream_then_restart_resumes_every_client_exactly_once() {
    let (env, mut gw, mut all, mut odd) = items_followed().await;
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(env.url.clone(), stop.clone());
    for _ in 0..3 {
        for _ in 0..3 {
            all.step(true).await;
            odd.step(true).await;
        }
        gw.kill9();
        gw.restart().await;
    }
    stop.store(true, Ordering::Relaxed);
    let writes = w.await.unwrap();
    assert!(writes > 0);
    for (f, filter) in [(&mut all, "true"), (&mut odd, "org = 'o1'")] {
        let expected = oracle(&env.db, "items", filter, "n").await;
        f.converge_to("n", &expected).await;
        assert_eq!(f.refetches, 0, "the same handle serves across restarts");
        assert_eq!(f.duplicates, 0, "nothing delivered twice");
    }
}

/// Each shape log's live file and its length.
fn live_log_lengths(data_dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let shapes = std::fs::read_dir(data_dir.join("shapes")).unwrap();
    let logs = shapes.map(|e| e.unwrap().path().join("log"));
    logs.filter_map(|p| Some((p.clone(), std::fs::metadata(&p).ok()?.len()))).collect()
}

/// A batch is durable once its journal frame is synced; the logs are synced later. A power
/// cut can take what the logs got since (here: everything after the snapshots): the restart
/// writes it back from the journal, and clients resume with nothing missing or twice.
#[tokio::test]
async fn logs_that_lose_their_unsynced_tail_in_a_power_cut_are_restored_from_the_journal() {
    let (env, mut gw, mut all, mut odd) = items_followed().await;
    let synced = live_log_lengths(gw.data_dir());
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(env.url.clone(), stop.clone());
    for _ in 0..3 {
        all.step(true).await;
        odd.step(true).await;
    }
    stop.store(true, Ordering::Relaxed);
    assert!(w.await.unwrap() > 0);
    // Acknowledged: PostgreSQL will not send these transactions again.
    let written = current_wal(&env.db).await;
    let started = std::time::Instant::now();
    while slot_confirmed(&env.db).await < written {
        assert!(started.elapsed() < DEADLINE, "the gateway acknowledges what it stored");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    gw.kill9();
    for (log, len) in &synced {
        std::fs::OpenOptions::new().write(true).open(log).unwrap().set_len(*len).unwrap();
    }
    let cut = live_log_lengths(gw.data_dir()).into_iter().zip(&synced).filter(|((_, now), (_, was))| now == was);
    assert_eq!(cut.count(), synced.len(), "every log is back at its synced length");
    gw.restart().await;
    // A client reading the logs from the start needs what was lost; those resuming, too.
    let mut fresh = Follower::new(&gw, "table=items");
    for (f, filter) in [(&mut all, "true"), (&mut odd, "org = 'o1'"), (&mut fresh, "true")] {
        let expected = oracle(&env.db, "items", filter, "n").await;
        f.converge_to("n", &expected).await;
        assert_eq!(f.refetches, 0, "the same handle serves after the power cut");
        assert_eq!(f.duplicates, 0, "nothing delivered twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_are_survived_by_reconnecting() {
    let mut env = Env::new().await;
    env.sql(ITEMS).await;
    let gw = env.ready_gateway().await;
    let mut f = Follower::new(&gw, "table=items");
    f.sync().await;
    for (round, mode) in [StopMode::Fast, StopMode::Immediate].into_iter().enumerate() {
        let pg = &env.pg;
        tokio::task::block_in_place(|| pg.restart(mode)).unwrap();
        env.reconnect().await;
        env.sql(&format!("insert into items values ({round}, 'o', 'after restart', 0)")).await;
        f.live_until(|rows| rows.len() == round + 1).await;
    }
    assert_eq!(f.duplicates, 0);
}

#[tokio::test]
async fn sigterm_stops_cleanly_acknowledges_what_is_stored_and_restarts_from_a_checkpoint() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    let mut gw = env.ready_gateway().await;
    let mut f = Follower::new(&gw, "table=items");
    f.sync().await;
    let before_insert = current_wal(&env.db).await;
    env.sql("insert into items values (1, 'o', 't', 0)").await;
    f.live_until(|rows| rows.len() == 1).await;
    assert_eq!(gw.terminate(), Some(0), "exit 0 on SIGTERM; log: {}", gw.log());
    assert!(slot_confirmed(&env.db).await > before_insert, "the stored insert was acknowledged");
    let checkpoints = std::fs::read_dir(env.data_dir.join("shapes"))
        .unwrap()
        .filter(|d| d.as_ref().unwrap().path().join("log.idx").exists())
        .count();
    assert_eq!(checkpoints, 1, "a clean stop checkpoints each log");

    env.sql("insert into items values (2, 'o', 't', 0); update items set n = 5 where id = 1").await;
    gw.restart().await;
    f.rebase(&gw);
    let expected = oracle(&env.db, "items", "true", "n").await;
    f.converge_to("n", &expected).await;
    assert_eq!((f.refetches, f.duplicates), (0, 0));
}

#[tokio::test]
async fn a_recreated_slot_makes_clients_refetch_instead_of_missing_changes() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items values (1, 'o', 't', 0)").await;
    let mut gw = env.ready_gateway().await;
    let mut f = Follower::new(&gw, "table=items");
    f.sync().await;
    gw.terminate();
    env.sql(
        "select pg_drop_replication_slot('gateway'); insert into items values (2, 'o', 'while the slot was gone', 0)",
    )
    .await;
    gw.restart().await;
    f.rebase(&gw);
    f.live_until(|rows| rows.len() == 2).await;
    assert_eq!(f.refetches, 1, "the old logs were dropped, so the client refetched");
}

#[tokio::test]
async fn a_dropped_publication_stops_the_gateway_with_the_fix() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    let mut gw = env.ready_gateway().await;
    let mut f = Follower::new(&gw, "table=items");
    f.sync().await;
    env.sql("drop publication gateway; insert into items values (1, 'o', 't', 0)").await;
    let started = std::time::Instant::now();
    let code = loop {
        if let Some(code) = gw.exit_code() {
            break code;
        }
        assert!(started.elapsed() < DEADLINE, "the gateway kept running without its publication");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_ne!(code, 0, "a fatal error exits non-zero; log: {}", gw.log());
    assert!(gw.log().contains("CREATE PUBLICATION"), "the log names the fix: {}", gw.log());
}
