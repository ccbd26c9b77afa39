use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use super::*;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shapes-log-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn append_snapshot_rows(log: &ShapeLog, messages: &[&[u8]]) {
    let mut rows = log.snapshot_rows();
    for m in messages {
        rows.push(|out| out.extend_from_slice(m)).unwrap();
    }
}

fn chunk_body(log: &ShapeLog, n: u64) -> Vec<u8> {
    log.read_snapshot_chunk(n).unwrap().unwrap().into_parts().concat()
}

fn entry(tx: u64, op: u64) -> (LogOffset, Vec<u8>) {
    (LogOffset::At { tx, op }, format!("{{\"m\":\"{tx}_{op}\"}}").into_bytes())
}

#[test]
fn entries_are_invisible_until_published() {
    let dir = tmp("publish");
    let log = ShapeLog::create(&dir, 1 << 20).unwrap();
    log.finish_snapshot(b"{}").unwrap();
    log.append(&[vec![entry(10, 0), entry(10, 2)]]).unwrap();
    assert_eq!(log.read_live(LogOffset::SNAPSHOT_END).unwrap().count, 0);
    log.sync_and_publish().unwrap();
    let r = log.read_live(LogOffset::SNAPSHOT_END).unwrap();
    assert_eq!((r.count, r.at_end), (2, true));
    assert_eq!(r.body, br#"{"m":"10_0"},{"m":"10_2"}"#);
    let r = log.read_live(LogOffset::At { tx: 10, op: 0 }).unwrap();
    assert_eq!(r.body, br#"{"m":"10_2"}"#);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn readers_at_one_position_share_a_read_while_one_holds_it() {
    let dir = tmp("shared");
    let log = ShapeLog::create(&dir, 1 << 20).unwrap();
    log.finish_snapshot(b"{}").unwrap();
    log.append(&[vec![entry(10, 0)]]).unwrap();
    log.sync_and_publish().unwrap();
    let first = log.read_live_shared(LogOffset::SNAPSHOT_END, u64::MAX).unwrap();
    let second = log.shared_live(LogOffset::SNAPSHOT_END, u64::MAX).expect("shared while held");
    assert!(Arc::ptr_eq(&first, &second));
    assert!(log.shared_live(LogOffset::At { tx: 10, op: 0 }, u64::MAX).is_none(), "another position reads its own");
    assert!(log.shared_live(LogOffset::SNAPSHOT_END, 1).is_none(), "a shorter read is another read");
    log.append(&[vec![entry(11, 0)]]).unwrap();
    log.sync_and_publish().unwrap();
    assert!(log.shared_live(LogOffset::SNAPSHOT_END, u64::MAX).is_none(), "the log grew: read again");
    assert_eq!(log.read_live_shared(LogOffset::SNAPSHOT_END, u64::MAX).unwrap().count, 2);
    drop((first, second));
    assert!(log.shared_live(LogOffset::SNAPSHOT_END, u64::MAX).is_none(), "nobody holds it: nothing kept");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_read_bounded_in_bytes_ends_with_a_whole_message_and_the_next_goes_on_from_it() {
    let dir = tmp("bounded");
    let log = ShapeLog::create(&dir, 1 << 20).unwrap();
    log.finish_snapshot(b"{}").unwrap();
    log.append(&[(0..10).map(|op| entry(10, op * 2)).collect()]).unwrap();
    log.sync_and_publish().unwrap();
    let (mut after, mut seen) = (LogOffset::SNAPSHOT_END, 0);
    loop {
        let r = log.read_live_shared(after, 30).unwrap();
        assert!(r.count <= 3, "each message is 14 bytes: at most the one past 30, read {}", r.count);
        seen += r.count;
        after = r.last.unwrap();
        if r.at_end {
            break;
        }
    }
    assert_eq!(seen, 10, "every message once, in order");
    assert_eq!(after, LogOffset::At { tx: 10, op: 18 });
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn damage_before_the_acknowledged_position_is_refused_a_torn_tail_is_cut() {
    let dir = tmp("damage");
    let log = ShapeLog::create(&dir, 1 << 20).unwrap();
    log.finish_snapshot(b"{}").unwrap();
    log.append(&(10..=50).map(|i| vec![entry(i, 0)]).collect::<Vec<_>>()).unwrap();
    log.sync_and_publish().unwrap();
    drop(log);
    let path = dir.join("log");
    let whole = fs::read(&path).unwrap();
    // A torn last write (the last record cut short, its transaction not acknowledged yet:
    // only unsynced writes tear) is cut back.
    fs::write(&path, &whole[..whole.len() - 3]).unwrap();
    let torn = ShapeLog::open_checked(&dir, 1 << 20, Lsn(50)).unwrap().unwrap();
    assert_eq!(torn.version().head, LogOffset::At { tx: 49, op: 0 });
    drop(torn);
    // A flipped byte in the middle, wherever it lands (length, checksum, payload): entries
    // before transaction 30 were acknowledged, so they cannot be torn.
    for at in [whole.len() / 4, whole.len() / 4 + 1, whole.len() / 4 + 9] {
        let mut damaged = whole.clone();
        damaged[at] ^= 0xff;
        fs::write(&path, &damaged).unwrap();
        let Err(refused) = ShapeLog::open_checked(&dir, 1 << 20, Lsn(30)) else {
            panic!("damage at byte {at} was served")
        };
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
    }
    // Garbage at the very end (a torn write of a later transaction) is cut back.
    let mut tail = whole.clone();
    tail.extend_from_slice(&[0xab; 30]);
    fs::write(&path, &tail).unwrap();
    let cut = ShapeLog::open_checked(&dir, 1 << 20, Lsn(51)).unwrap().unwrap();
    assert_eq!(cut.version().head, LogOffset::At { tx: 50, op: 0 });
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn discarded_unpublished_writes_are_written_again_once() {
    let (a, b) = (tmp("discard-a"), tmp("discard-b"));
    let (retried, straight) = (ShapeLog::create(&a, 64).unwrap(), ShapeLog::create(&b, 64).unwrap());
    for log in [&retried, &straight] {
        log.finish_snapshot(b"{}").unwrap();
        log.append(&(1..=5).map(|i| vec![entry(i, 0)]).collect::<Vec<_>>()).unwrap();
        log.sync_and_publish().unwrap();
    }
    let rest: Vec<_> = (6..=9).map(|i| vec![entry(i, 0), entry(i, 1)]).collect();
    let published = retried.written_mark();
    retried.append(&rest).unwrap();
    retried.rewind(published);
    assert_eq!(retried.read_live(LogOffset::At { tx: 5, op: 0 }).unwrap().count, 0, "nothing unpublished shows");
    retried.append(&rest).unwrap();
    retried.sync_and_publish().unwrap();
    straight.append(&rest).unwrap();
    straight.sync_and_publish().unwrap();
    // Same entries, same chunk boundaries: read both from the start, chunk by chunk.
    let (mut x, mut y) = (LogOffset::SNAPSHOT_END, LogOffset::SNAPSHOT_END);
    loop {
        let (rx, ry) = (retried.read_live(x).unwrap(), straight.read_live(y).unwrap());
        assert_eq!((rx.count, rx.last, &rx.body), (ry.count, ry.last, &ry.body));
        if rx.count == 0 {
            break;
        }
        (x, y) = (rx.last.unwrap(), ry.last.unwrap());
    }
    fs::remove_dir_all(a).unwrap();
    fs::remove_dir_all(b).unwrap();
}

#[test]
fn a_chunk_served_while_the_snapshot_is_written_is_the_one_on_disk() {
    let dir = tmp("recent");
    let log = ShapeLog::create(&dir, 100).unwrap();
    append_snapshot_rows(&log, &[&[b'x'; 60], &[b'y'; 60], &[b'z'; 10]]);
    assert_eq!(log.snapshot_chunk_count(), 1);
    let from_memory = chunk_body(&log, 0);
    assert_eq!(from_memory, [&b"["[..], &[b'x'; 60], b",", &[b'y'; 60], b"]"].concat());
    assert_eq!(log.read_snapshot_chunk(0).unwrap().unwrap().body_len(), from_memory.len() as u64);
    append_snapshot_rows(&log, &[&[b'w'; 100]]);
    assert_eq!(log.snapshot_chunk_count(), 2);
    assert_eq!(chunk_body(&log, 0), from_memory, "read back from the file once a newer chunk closed");
    let second = chunk_body(&log, 1);
    log.finish_snapshot(b"E").unwrap();
    assert_eq!(chunk_body(&log, 1), second);
    assert_eq!(chunk_body(&log, 2), b"[E]");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_snapshot_of_many_blocks_reads_the_same_from_memory_and_from_the_file() {
    // Rows of 100 KiB fill the 256 KiB blocks the background writer writes; chunks of
    // 1 MiB span several blocks each.
    let dir = tmp("blocks");
    let log = ShapeLog::create(&dir, 1 << 20).unwrap();
    let rows: Vec<Vec<u8>> = (0..40u8).map(|i| vec![b'a' + i % 26; 100 << 10]).collect();
    let mut served = Vec::new();
    for batch in rows.chunks(3) {
        let before = log.snapshot_chunk_count();
        append_snapshot_rows(&log, &batch.iter().map(Vec::as_slice).collect::<Vec<_>>());
        // Each chunk as its first readers get it, while it is the newest (from memory).
        served.extend((before..log.snapshot_chunk_count()).map(|n| chunk_body(&log, n)));
    }
    log.finish_snapshot(b"E").unwrap();
    assert!(served.len() >= 3, "{} chunks", served.len());
    for (n, body) in served.iter().enumerate() {
        assert_eq!(&chunk_body(&log, n as u64), body, "chunk {n} from the file");
    }
    let every: Vec<Vec<u8>> = (0..log.snapshot_chunk_count())
        .map(|n| chunk_body(&log, n)[1..].to_vec())
        .map(|mut b| {
            b.pop();
            b
        })
        .collect();
    assert_eq!(every.join(&b','), [rows.join(&b','), b"E".to_vec()].join(&b','), "every row once, in order");
    drop(log);
    let reopened = ShapeLog::open(&dir, 1 << 20).unwrap().expect("a complete snapshot");
    for (n, body) in served.iter().enumerate() {
        assert_eq!(&chunk_body(&reopened, n as u64), body, "chunk {n} after reopening");
    }
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn chunks_bound_reads_and_survive_reopen() {
    let dir = tmp("chunks");
    let log = ShapeLog::create(&dir, 100).unwrap();
    append_snapshot_rows(&log, &[&[b'x'; 60], &[b'y'; 60]]);
    append_snapshot_rows(&log, &[&[b'z'; 10]]);
    log.finish_snapshot(b"E").unwrap();
    assert_eq!(log.snapshot_chunk_count(), 2);
    let txns: Vec<_> = (1..=20).map(|i| vec![entry(i, 0)]).collect();
    log.append(&txns).unwrap();
    log.sync_and_publish().unwrap();
    let mut after = LogOffset::SNAPSHOT_END;
    let mut seen = 0;
    loop {
        let r = log.read_live(after).unwrap();
        seen += r.count;
        if r.at_end {
            break;
        }
        assert!(r.count > 0, "a non-final read must advance");
        after = r.last.unwrap();
    }
    assert_eq!(seen, 20);
    drop(log);
    let reopened = ShapeLog::open(&dir, 100).unwrap().unwrap();
    assert_eq!(reopened.version().head, LogOffset::At { tx: 20, op: 0 });
    assert_eq!(chunk_body(&reopened, 1), b"[zzzzzzzzzz,E]");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_checkpoint_is_used_only_while_the_log_is_unchanged() {
    let dir = tmp("checkpoint");
    let log = ShapeLog::create(&dir, 100).unwrap();
    log.finish_snapshot(b"E").unwrap();
    let txns: Vec<_> = (1..=30).map(|i| vec![entry(i, 0)]).collect();
    log.append(&txns).unwrap();
    log.sync_and_publish().unwrap();
    log.checkpoint().unwrap();
    let scanned = |log: &ShapeLog| {
        let l = log.live.lock().unwrap();
        (l.durable_len, l.head, l.chunk_starts.clone(), l.sparse.clone())
    };
    let before = scanned(&log);
    drop(log);
    let from_checkpoint = ShapeLog::open(&dir, 100).unwrap().unwrap();
    assert_eq!(scanned(&from_checkpoint), before);
    from_checkpoint.append(&[vec![entry(31, 0)]]).unwrap();
    from_checkpoint.sync_and_publish().unwrap();
    drop(from_checkpoint);
    let rescanned = ShapeLog::open(&dir, 100).unwrap().unwrap();
    assert_eq!(rescanned.version().head, LogOffset::At { tx: 31, op: 0 }, "a stale checkpoint is ignored");
    assert_eq!(
        rescanned.read_live(LogOffset::At { tx: 30, op: 0 }).unwrap().last,
        Some(LogOffset::At { tx: 31, op: 0 })
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn torn_tail_is_cut_to_the_last_whole_entry() {
    let dir = tmp("torn");
    let log = ShapeLog::create(&dir, 1 << 20).unwrap();
    log.finish_snapshot(b"E").unwrap();
    log.append(&[vec![entry(1, 0)], vec![entry(2, 0), entry(2, 2)]]).unwrap();
    log.sync().unwrap();
    drop(log);
    let f = OpenOptions::new().write(true).open(dir.join("log")).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - 3).unwrap();
    let log = ShapeLog::open(&dir, 1 << 20).unwrap().unwrap();
    assert_eq!(log.version().head, LogOffset::At { tx: 1, op: 0 }, "half of transaction 2 is dropped");
    log.append(&[vec![entry(2, 0), entry(2, 2)]]).unwrap();
    log.sync_and_publish().unwrap();
    assert_eq!(log.read_live(LogOffset::SNAPSHOT_END).unwrap().count, 3);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn incomplete_snapshot_means_no_log() {
    let dir = tmp("incomplete");
    let log = ShapeLog::create(&dir, 1 << 20).unwrap();
    append_snapshot_rows(&log, &[b"{}"]);
    log.seal_snapshot(b"E").unwrap();
    drop(log);
    assert!(ShapeLog::open(&dir, 1 << 20).unwrap().is_none(), "sealed is not complete: the trailer marks it");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_torn_or_forged_trailer_leaves_the_snapshot_incomplete_and_an_old_index_still_loads() {
    let dir = tmp("trailer");
    let log = ShapeLog::create(&dir, 1 << 20).unwrap();
    append_snapshot_rows(&log, &[br#"{"v":"SNAPEND1"}"#]);
    log.finish_snapshot(b"E").unwrap();
    drop(log);
    let path = dir.join("snapshot");
    let whole = fs::read(&path).unwrap();
    assert!(ShapeLog::open(&dir, 1 << 20).unwrap().is_some());
    // A crash inside the trailer's write: every cut short of the whole file is incomplete.
    for cut in 1..whole.len() {
        fs::write(&path, &whole[..cut]).unwrap();
        assert!(ShapeLog::open(&dir, 1 << 20).unwrap().is_none(), "cut at {cut}");
    }
    // The trailer's bytes in place but its index unwritten (zeros): incomplete.
    let index_len = u64::from_le_bytes(whole[whole.len() - 16..whole.len() - 8].try_into().unwrap()) as usize;
    let mut zeroed = whole.clone();
    zeroed[whole.len() - 16 - index_len..whole.len() - 16].fill(0);
    fs::write(&path, &zeroed).unwrap();
    assert!(ShapeLog::open(&dir, 1 << 20).unwrap().is_none());
    // A data directory of an earlier version: the ranges in `snapshot.idx`, no trailer.
    let body = &whole[..whole.len() - 16 - index_len];
    fs::write(&path, body).unwrap();
    fs::write(dir.join("snapshot.idx"), &whole[body.len()..whole.len() - 16]).unwrap();
    let old = ShapeLog::open(&dir, 1 << 20).unwrap().expect("an old layout loads");
    assert_eq!(chunk_body(&old, 0), b"[{\"v\":\"SNAPEND1\"},E]");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn readers_of_the_last_append_read_it_from_memory_as_the_file_holds_it() {
    let dir = tmp("recent");
    // Small chunks, so some appends cross a chunk boundary (a read ends there).
    let log = ShapeLog::create(&dir, 60).unwrap();
    log.finish_snapshot(b"{}").unwrap();
    let mut offsets = vec![LogOffset::SNAPSHOT_END];
    for tx in 10..16u64 {
        let head = *offsets.last().unwrap();
        let batch: Vec<_> = (0..tx % 3 + 1).map(|op| entry(tx, op * 2)).collect();
        offsets.extend(batch.iter().map(|(o, _)| *o));
        log.append(&[batch]).unwrap();
        assert!(log.read_live_in_memory(head, u64::MAX).is_none(), "nothing is read before it is published");
        log.sync_and_publish().unwrap();
        assert!(log.read_live_in_memory(head, u64::MAX).is_some(), "the reader at the head before it reads memory");
        // The same log opened afresh has no append in memory: every read is the file's.
        let from_file = ShapeLog::open(&dir, 60).unwrap().unwrap();
        for &after in &offsets {
            let file = from_file.read_live(after).unwrap();
            if let Some(memory) = log.read_live_in_memory(after, u64::MAX) {
                assert!(after >= head, "only readers at or past the prior head use memory");
                assert_eq!(
                    (&memory.body, memory.last, memory.at_end, &memory.messages),
                    (&file.body, file.last, file.at_end, &file.messages),
                    "after {after:?}"
                );
            }
        }
    }
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_follower_sees_whole_transactions_as_the_writer_publishes_them() {
    let dir = tmp("follow");
    let writer = ShapeLog::create(&dir, 1 << 20).unwrap();
    writer.finish_snapshot(b"{}").unwrap();
    let first = writer.append(&[vec![entry(10, 0)]]).unwrap();
    let before_parts = writer.written_mark();
    let follower = ShapeLog::open_following(&dir, 1 << 20).unwrap().expect("snapshot complete");
    assert_eq!(follower.version().head, LogOffset::At { tx: 10, op: 0 }, "whole transactions in the file are seen");
    assert_eq!(follower.follow(first.at, &first.bytes).unwrap(), Followed::Taken, "what it holds is skipped");
    // A transaction in parts: nothing of it shows until its last part.
    let part = writer.append_with(&[vec![entry(11, 0), entry(11, 2)]], false).unwrap();
    assert_eq!(follower.follow(part.at, &part.bytes).unwrap(), Followed::Taken);
    assert_eq!(follower.read_live(LogOffset::At { tx: 10, op: 0 }).unwrap().count, 0);
    // The writer gives the parts up and writes another transaction over them.
    writer.rewind(before_parts);
    let again = writer.append(&[vec![entry(12, 0)]]).unwrap();
    assert_eq!(again.at, part.at);
    assert_eq!(follower.follow(again.at, &again.bytes).unwrap(), Followed::Taken);
    let r = follower.read_live(LogOffset::At { tx: 10, op: 0 }).unwrap();
    assert_eq!(r.body, br#"{"m":"12_0"}"#, "the given-up parts never show");
    // Bytes past the view's end: the file fills the gap.
    let skipped = writer.append(&[vec![entry(13, 0)]]).unwrap();
    let next = writer.append(&[vec![entry(14, 0)]]).unwrap();
    assert!(skipped.at < next.at);
    assert_eq!(follower.follow(next.at, &next.bytes).unwrap(), Followed::Taken);
    let r = follower.read_live(LogOffset::At { tx: 12, op: 0 }).unwrap();
    assert_eq!(r.body, br#"{"m":"13_0"},{"m":"14_0"}"#);
    // Bytes the file does not hold before them (another log's, say) are a gap.
    let stray = writer.append(&[vec![entry(15, 0)]]).unwrap();
    assert_eq!(follower.follow(stray.at + 1000, &stray.bytes).unwrap(), Followed::Gap);
    assert_eq!(follower.version().head, LogOffset::At { tx: 14, op: 0 }, "a gap changes nothing readers see");
    fs::remove_dir_all(dir).unwrap();
}
