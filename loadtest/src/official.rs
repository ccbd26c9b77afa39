//! `--client official`: the subscribers are the official `@electric-sql/client`, run in one
//! Node process by `official-client/subscribers.mjs`, as an app would use it. What they
//! report (first up-to-date, each row with its send and receive times) feeds the same
//! recorder and the same end-of-run check as the built-in subscribers.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::record::{Recorder, Seen};

/// One official subscriber: its identity (scope), token and shape URL.
pub struct Official {
    pub identity: usize,
    pub token: String,
    pub shape_url: String,
}

/// Where the Node side lives, with its own `package.json`.
fn client_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("official-client")
}

/// Starts the Node process (its pid, for its CPU); the task ends when `stop` is cancelled,
/// with what each subscriber saw (in the order given).
pub fn spawn(
    subscribers: Vec<Official>,
    table: &str,
    sse: bool,
    first_id: u64,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
) -> Result<(Option<u32>, JoinHandle<Vec<Seen>>), String> {
    let dir = client_dir();
    if !dir.join("node_modules/@electric-sql/client").is_dir() {
        return Err(format!(
            "--client official needs the client's package: run `npm ci` in {} (Node.js 20 or later)",
            dir.display()
        ));
    }
    let settings = serde_json::json!({
        "table": table,
        "sse": sse,
        "tokens": subscribers.iter().map(|s| &s.token).collect::<Vec<_>>(),
        "shapeUrls": subscribers.iter().map(|s| &s.shape_url).collect::<Vec<_>>(),
    });
    let mut child = Command::new("node")
        .arg(dir.join("subscribers.mjs"))
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting node for --client official: {e} (is Node.js installed?)"))?;
    let (pid, stdout) = (child.id(), child.stdout.take().ok_or("node's stdout")?);
    // On stdin, not as an argument: the tokens are not for other users of the machine to read.
    let mut stdin = child.stdin.take().ok_or("node's stdin")?;
    let mut seen: Vec<Seen> = subscribers.iter().map(|s| Seen { identity: s.identity, ..Seen::default() }).collect();
    let task = tokio::spawn(async move {
        let started = Instant::now();
        if stdin.write_all(format!("{settings}\n").as_bytes()).await.is_err() {
            recorder.error("the official client's process did not take its settings".into());
        }
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = tokio::select! {
                line = lines.next_line() => line,
                _ = stop.cancelled() => break,
            };
            match line {
                Ok(Some(line)) => take(&line, &mut seen, first_id, started, &recorder),
                Ok(None) | Err(_) => {
                    recorder.error("the official client's process ended early".into());
                    break;
                }
            }
        }
        // Closing its stdin ends the Node process.
        drop(stdin);
        let _ = child.wait().await;
        for s in &seen {
            if s.connect.is_some() {
                recorder.connected.fetch_sub(1, Ordering::Relaxed);
            }
        }
        seen
    });
    Ok((pid, task))
}

/// One report line: `U <i>`, `R <i> <id> <sent_us> <received_us>` or `E <i> <message>`.
fn take(line: &str, seen: &mut [Seen], first_id: u64, started: Instant, recorder: &Recorder) {
    let mut fields = line.splitn(3, ' ');
    let (kind, i) = (fields.next(), fields.next().and_then(|i| i.parse::<usize>().ok()));
    let Some(s) = i.and_then(|i| seen.get_mut(i)) else {
        return recorder.error(format!("the official client reported {line:?}"));
    };
    match kind {
        Some("U") if s.connect.is_none() => {
            s.connect = Some(started.elapsed());
            recorder.up_to_date.fetch_add(1, Ordering::Relaxed);
            recorder.connected.fetch_add(1, Ordering::Relaxed);
        }
        Some("R") => {
            let numbers: Vec<u64> =
                fields.next().unwrap_or_default().split(' ').filter_map(|n| n.parse().ok()).collect();
            let &[id, sent, received] = numbers.as_slice() else {
                return recorder.error(format!("the official client reported {line:?}"));
            };
            if id < first_id {
                return; // a row from before the run
            }
            s.ids.push(id);
            if sent > 0 {
                recorder.delivered(&[received.saturating_sub(sent)], &[(id, received)]);
            }
        }
        Some("E") => recorder.error(format!("official client: {}", fields.next().unwrap_or_default())),
        _ => {}
    }
}
