//! Storage faults: a full disk stops acknowledgement, reports not-ready with the reason,
//! keeps serving what is stored, and recovers by itself when space returns.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{DEADLINE, Env, Follower, Gateway, ITEMS, current_wal, get, slot_confirmed};

/// A small tmpfs, unmounted when dropped (after the gateway using it, declared later).
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    pub fn mount(path: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let out =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).output();
        let ok = out.as_ref().is_ok_and(|o| o.status.success());
        assert!(ok, "mounting a tmpfs needs root (the suite runs as root, like scripts/test.sh): {out:?}");
        SmallDisk(path.into())
    }

    /// Writes a file until the disk is full.
    pub fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_stops_acknowledging_and_recovers_when_space_returns() {
    let env = Env::new().await;
    env.sql(ITEMS).await;
    env.sql("insert into items select i, 'o', 't', 0 from generate_series(1, 20) i").await;
    let disk = SmallDisk::mount(&env.pg.root().join("small-disk"), "4m");
    // Heartbeats as often as the monitor checks: they move the server's WAL on.
    let mut gw = Gateway::start(&env.url, &disk.0, &["--heartbeat-s", "1"]);
    gw.ready().await;
    let mut f = Follower::new(&gw, "table=items");
    f.sync().await;
    let filler = disk.fill();
    env.sql("insert into items select i, 'o', repeat('x', 3000), 0 from generate_series(100, 300) i").await;
    // The end of the insert's commit: acknowledging it would claim the logs hold the insert.
    let committed = current_wal(&env.db).await;

    let started = Instant::now();
    let reason = loop {
        let r = get(&format!("{}/readyz", gw.base())).await;
        if r.status == 503 {
            break r.body["message"].as_str().unwrap().to_string();
        }
        assert!(started.elapsed() < DEADLINE, "never reported not-ready; log: {}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reason.contains("storage") && reason.contains("space"), "{reason}");
    // Keepalives flow past the transaction the fan-out cannot store (Electric 1.7.9 lost a
    // transaction by acknowledging a keepalive's position here): WAL the gateway does not
    // follow and its own heartbeats move the server's position on, the server asks for
    // replies every second, and the stream, not blocked, reads every keepalive.
    env.sql("alter system set wal_sender_timeout = '2s'").await;
    env.sql("select pg_reload_conf()").await;
    env.sql("create table unpublished (id int); insert into unpublished select generate_series(1, 10000)").await;
    let beyond = current_wal(&env.db).await;
    let db = &env.db;
    testkit::wait_until("the server sent WAL past the stuck transaction, and heartbeats", || async move {
        let q = "select coalesce(max(sent_lsn)::text, '0/0') from pg_stat_replication";
        let sent: shapes::offset::Lsn = db.query_one(q, &[]).await.unwrap().get::<_, String>(0).parse().unwrap();
        sent >= beyond
    })
    .await;
    let base = gw.base();
    testkit::wait_until("two heartbeats", || async {
        testkit::metric_sum(&base, "gateway_heartbeats_total", &[]).await >= 2.0
    })
    .await;
    // Two status replies from the gateway to the server after the failure was known: what
    // it would acknowledge is on record by then.
    for _ in 0..2 {
        let since: String = env.db.query_one("select now()::text", &[]).await.unwrap().get(0);
        let (db, since) = (&env.db, since.as_str());
        testkit::wait_until("a status reply from the gateway", || async move {
            let q = "select coalesce(max(reply_time) > $1::text::timestamptz, false) from pg_stat_replication";
            db.query_one(q, &[&since]).await.unwrap().get::<_, bool>(0)
        })
        .await;
    }
    let confirmed = slot_confirmed(&env.db).await;
    assert!(
        confirmed < committed,
        "nothing past the stored logs was acknowledged: confirmed {confirmed}, the insert ended at {committed}; log: {}",
        gw.log()
    );
    // What is stored is still served.
    let snapshot = get(&format!("{}/v1/shape?table=items&offset=-1", gw.base())).await;
    assert_eq!(snapshot.status, 200, "{}", snapshot.body);
    let metrics = testkit::http().get(format!("{}/metrics", gw.base())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("gateway_storage_failing 1"), "{metrics}");

    std::fs::remove_file(filler).unwrap();
    gw.ready().await;
    f.live_until(|rows| rows.len() == 221).await;
    assert_eq!((f.duplicates, f.refetches), (0, 0), "every change once, same shape");
    let started = Instant::now();
    while slot_confirmed(&env.db).await < committed {
        assert!(started.elapsed() < DEADLINE, "acknowledging never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(gw);
}
