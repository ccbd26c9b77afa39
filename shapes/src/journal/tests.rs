use std::fs;
use std::path::{Path, PathBuf};

use super::*;

/// A data dir with two shape directories, removed when the test ends.
struct TmpDir(PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = PathBuf;

    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tmp(name: &str) -> TmpDir {
    let dir = std::env::temp_dir().join(format!("journal-test-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("shapes/a")).unwrap();
    fs::create_dir_all(dir.join("shapes/b")).unwrap();
    TmpDir(dir)
}

/// Appends `bytes` to the log at `log` as the fan-out does, recording them in the journal.
fn append(journal: &mut Journal, log: &Path, bytes: &[u8]) {
    let at = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    OpenOptions::new().create(true).truncate(false).write(true).open(log).unwrap().write_all_at(bytes, at).unwrap();
    journal.record(log, at, bytes);
}

#[test]
fn a_log_that_lost_its_unsynced_tail_gets_it_back_from_the_journal() {
    let dir = tmp("lost-tail");
    let (a, b) = (dir.join("shapes/a/log"), dir.join("shapes/b/log"));
    let (mut journal, _) = Journal::open(&dir).unwrap();
    append(&mut journal, &a, b"first-a ");
    append(&mut journal, &b, b"first-b ");
    journal.commit().unwrap();
    append(&mut journal, &a, b"second-a");
    journal.commit().unwrap();
    drop(journal);
    // A power cut: `a` kept only part of its first write, `b` nothing.
    fs::write(&a, b"firs").unwrap();
    fs::write(&b, b"").unwrap();
    let (_journal, replayed) = Journal::open(&dir).unwrap();
    assert_eq!(replayed, Replayed { frames: 2, records: 3, skipped: 0, torn: 0 });
    assert_eq!(fs::read(&a).unwrap(), b"first-a second-a");
    assert_eq!(fs::read(&b).unwrap(), b"first-b ");
    assert_eq!(segments(&dir.join("journal")).unwrap().len(), 1, "replayed segments are removed; one new is open");
}

#[test]
fn a_torn_last_frame_and_a_deleted_shape_are_passed_over() {
    let dir = tmp("torn");
    let (a, b) = (dir.join("shapes/a/log"), dir.join("shapes/b/log"));
    let (mut journal, _) = Journal::open(&dir).unwrap();
    append(&mut journal, &a, b"kept");
    append(&mut journal, &b, b"gone");
    journal.commit().unwrap();
    append(&mut journal, &a, b"torn");
    journal.commit().unwrap();
    let segment = segment_path(&dir.join("journal"), journal.seq);
    drop(journal);
    let len = fs::metadata(&segment).unwrap().len();
    OpenOptions::new().write(true).open(&segment).unwrap().set_len(len - 2).unwrap();
    fs::remove_dir_all(dir.join("shapes/b")).unwrap();
    fs::write(&a, b"").unwrap();
    let (_journal, replayed) = Journal::open(&dir).unwrap();
    assert_eq!(replayed, Replayed { frames: 1, records: 1, skipped: 1, torn: 1 });
    assert_eq!(fs::read(&a).unwrap(), b"kept", "the torn frame's batch was never acknowledged");
}

#[test]
fn a_checkpoint_removes_the_sealed_segment_and_a_failed_frame_leaves_nothing() {
    let dir = tmp("checkpoint");
    let a = dir.join("shapes/a/log");
    let (mut journal, _) = Journal::open(&dir).unwrap();
    append(&mut journal, &a, b"one");
    journal.commit().unwrap();
    journal.first_frame = Some(Instant::now() - SEGMENT_AGE);
    let checkpoint = journal.seal_if_due().unwrap().expect("the segment is due");
    assert_eq!(checkpoint.logs.iter().collect::<Vec<_>>(), [&a]);
    checkpoint.run().unwrap();
    assert_eq!(segments(&dir.join("journal")).unwrap().len(), 1);
    // A frame discarded before its commit is not written.
    append(&mut journal, &a, b"two");
    journal.discard_frame();
    journal.commit().unwrap();
    drop(journal);
    fs::write(&a, b"").unwrap();
    let (_journal, replayed) = Journal::open(&dir).unwrap();
    assert_eq!(replayed.frames, 0, "the checkpoint synced the log; nothing is left to replay");
}

#[test]
fn a_record_naming_a_path_outside_the_data_dir_is_refused() {
    let mut frame = Vec::new();
    for rel in ["/etc/passwd", "shapes/../../x"] {
        frame.clear();
        frame.extend_from_slice(&(rel.len() as u16).to_le_bytes());
        frame.extend_from_slice(rel.as_bytes());
        frame.extend_from_slice(&0u64.to_le_bytes());
        frame.extend_from_slice(&1u32.to_le_bytes());
        frame.push(b'x');
        assert!(parse_record(&frame).is_none(), "{rel}");
    }
}

/// Makes the journal's current segment due for sealing, and seals it.
fn seal(journal: &mut Journal) -> Checkpoint {
    journal.first_frame = Some(Instant::now() - SEGMENT_AGE);
    journal.seal_if_due().unwrap().expect("due")
}

fn records(tailed: tail::Tailed) -> Vec<(PathBuf, u64, Vec<u8>)> {
    match tailed {
        tail::Tailed::Records(r) => r.into_iter().map(|w| (w.path, w.at, w.bytes.to_vec())).collect(),
        tail::Tailed::Lost => panic!("lost frames"),
    }
}

#[test]
fn a_tail_reads_each_frame_once_across_segments_even_removed_ones_and_says_when_it_lost_some() {
    let dir = tmp("tail");
    let (a, b) = (dir.join("shapes/a/log"), dir.join("shapes/b/log"));
    let (mut journal, _) = Journal::open(&dir).unwrap();
    let mut tail = tail::JournalTail::start(&dir).unwrap();
    append(&mut journal, &a, b"one");
    append(&mut journal, &b, b"two");
    assert!(records(tail.poll().unwrap()).is_empty(), "a frame not yet written is not read");
    journal.commit().unwrap();
    assert_eq!(records(tail.poll().unwrap()), vec![(a.clone(), 0, b"one".to_vec()), (b.clone(), 0, b"two".to_vec())]);
    assert!(records(tail.poll().unwrap()).is_empty(), "read once");
    // A frame in a segment sealed and removed before the tail read it, then the next segment.
    append(&mut journal, &a, b"three");
    journal.commit().unwrap();
    let checkpoint = seal(&mut journal);
    append(&mut journal, &b, b"four");
    journal.commit().unwrap();
    checkpoint.run().unwrap();
    assert_eq!(
        records(tail.poll().unwrap()),
        vec![(a.clone(), 3, b"three".to_vec()), (b.clone(), 3, b"four".to_vec())]
    );
    // Two segments go by unread: the one between was never opened, so frames are lost.
    seal(&mut journal).run().unwrap();
    append(&mut journal, &a, b"five");
    journal.commit().unwrap();
    seal(&mut journal).run().unwrap();
    append(&mut journal, &b, b"six");
    journal.commit().unwrap();
    assert!(matches!(tail.poll().unwrap(), tail::Tailed::Lost));
    assert_eq!(records(tail.poll().unwrap()), vec![(b.clone(), 7, b"six".to_vec())], "then on from the oldest left");
}
