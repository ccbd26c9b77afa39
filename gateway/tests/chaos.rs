//! Chaos: faults in a loop (the gateway killed, PostgreSQL restarted fast and immediate, the
//! gateway's disk filled and freed, the gateway paused past the replication timeout) while
//! a writer commits inserts, updates, deletes, multi-row transactions and rows moving
//! between scopes, and subscribers follow their shapes. Afterwards every subscriber's rows
//! equal the database's, nothing was delivered twice, and the slot's confirmed position
//! never passed what the data dir recorded. `CHAOS_ROUNDS` sets the rounds: the suite runs
//! one of each fault; `scripts/chaos.sh` runs many.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gateway::devdb::{DevOptions, StopMode};

use crate::faults::SmallDisk;
use testkit::{Env, Follower, Gateway, ITEMS, get, oracle, slot_confirmed};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillGateway,
    RestartPostgresFast,
    RestartPostgresImmediate,
    FillDisk,
    PauseGateway,
}

const FAULTS: [Fault; 5] = [
    Fault::KillGateway,
    Fault::RestartPostgresFast,
    Fault::FillDisk,
    Fault::RestartPostgresImmediate,
    Fault::PauseGateway,
];

/// Commits a mix of changes until stopped, reconnecting across PostgreSQL restarts.
fn writer(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let committed = AtomicU64::new(0);
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let Ok((db, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            tokio::spawn(conn);
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = 1000 + i;
                let old = 1 + i % 60;
                let sql = match i % 5 {
                    0 => format!("insert into items values ({id}, 'o' || ({id} % 3), 'w', 0)"),
                    1 => format!("update items set n = n + 1 where id = {old}"),
                    2 => format!(
                        "update items set org = case org when 'o0' then 'o1' when 'o1' then 'o2' else 'o0' end, n = n + 1 where id = {old}"
                    ),
                    3 => format!("delete from items where id = {}", id - 7),
                    _ => format!(
                        "begin; insert into items values ({id}, 'o1', 'multi', 0), ({}, 'o2', 'multi', 0); update items set n = n + 10 where id in ({old}, {}); commit",
                        id + 1_000_000,
                        old + 1
                    ),
                };
                match db.batch_execute(&sql).await {
                    Ok(()) => {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) if db.is_closed() => break,
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        committed.load(Ordering::Relaxed)
    })
}

/// The data dir's recorded position (`data_dir::DataDir`: the stored position, then the
/// newest LSN readers were told of).
fn recorded(dir: &std::path::Path) -> shapes::offset::Lsn {
    std::fs::read_to_string(dir.join("position")).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

async fn not_ready(gw: &Gateway) -> bool {
    get(&format!("{}/readyz", gw.base())).await.status == 503
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_a_loop_lose_nothing_and_deliver_nothing_twice() {
    let rounds: usize = std::env::var("CHAOS_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(FAULTS.len());
    let options = DevOptions {
        fsync: true,
        // A paused gateway is dropped by the server after this long without replies.
        settings: vec![("wal_sender_timeout".into(), "2s".into())],
    };
    let mut env = Env::with(options).await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o' || (i % 3), 't', 0 from generate_series(1, 60) i").await;
    let disk = SmallDisk::mount(&env.pg.root().join("chaos-disk"), "64m");
    let mut gw = Gateway::start(&env.url, &disk.0, &[]);
    gw.ready().await;
    let filters = ["true", "org = 'o0'", "org = 'o1'"];
    let mut followers: Vec<Follower> =
        ["table=items", "table=items&where=org%3D%27o0%27", "table=items&where=org%3D%27o1%27"]
            .iter()
            .map(|p| Follower::new(&gw, p))
            .collect();
    for f in &mut followers {
        f.sync().await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(env.url.clone(), stop.clone());
    let mut survived: BTreeMap<Fault, usize> = BTreeMap::new();
    for round in 0..rounds {
        for f in &mut followers {
            f.step(true).await;
        }
        let fault = FAULTS[round % FAULTS.len()];
        match fault {
            Fault::KillGateway => {
                gw.kill9();
                assert!(
                    slot_confirmed(&env.db).await <= recorded(&disk.0),
                    "the slot passed what the data dir recorded"
                );
                gw.restart().await;
            }
            Fault::RestartPostgresFast | Fault::RestartPostgresImmediate => {
                let mode = if fault == Fault::RestartPostgresFast { StopMode::Fast } else { StopMode::Immediate };
                let pg = &env.pg;
                tokio::task::block_in_place(|| pg.restart(mode)).unwrap();
                env.reconnect().await;
                gw.ready().await;
            }
            Fault::FillDisk => {
                let filler = disk.fill();
                let mut waited = 0;
                while !not_ready(&gw).await && waited < 100 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    waited += 1;
                }
                assert!(not_ready(&gw).await, "a full disk makes the gateway not ready");
                assert!(slot_confirmed(&env.db).await <= recorded(&disk.0));
                std::fs::remove_file(filler).unwrap();
                gw.ready().await;
            }
            Fault::PauseGateway => {
                let pid = gw.pid().unwrap().to_string();
                Command::new("kill").args(["-STOP", &pid]).status().unwrap();
                tokio::time::sleep(Duration::from_secs(4)).await;
                Command::new("kill").args(["-CONT", &pid]).status().unwrap();
                gw.ready().await;
            }
        }
        *survived.entry(fault).or_default() += 1;
        for f in &mut followers {
            f.rebase(&gw);
            f.step(true).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = w.await.unwrap();
    assert!(writes > 0, "the writer committed");
    for (f, filter) in followers.iter_mut().zip(filters) {
        let expected = oracle(&env.db, "items", filter, "n").await;
        f.converge_to("n", &expected).await;
        assert_eq!(f.duplicates, 0, "{filter}: nothing delivered twice");
        assert_eq!(f.refetches, 0, "{filter}: the same shape throughout");
    }
    assert!(slot_confirmed(&env.db).await <= recorded(&disk.0));
    println!("chaos: {writes} transactions committed; faults survived: {survived:?}");
    drop(gw);
}
