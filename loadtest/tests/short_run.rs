//! A short `loadtest local` run: 200 subscribers over 20 scopes for 10 s must get exactly
//! their scope's events, and the report files must be written and parse.

use std::path::Path;
use std::process::Command;

/// The gateway binary `loadtest local` starts; built here when missing (`cargo test
/// --workspace` builds it anyway).
fn gateway_bin() -> std::path::PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_loadtest")).with_file_name("gateway");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo).args(["build", "-p", "gateway", "--bin", "gateway"]).status().unwrap();
        assert!(status.success(), "building the gateway failed");
    }
    bin
}

/// Runs `loadtest local` with `args` into `out`; the summary and the report, after checking
/// the run passed.
fn run_local(args: &[&str], out: &Path) -> (serde_json::Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("local")
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--gateway-bin")
        .arg(gateway_bin())
        .output()
        .unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the run failed:\n{printed}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    (summary, std::fs::read_to_string(out.join("report.html")).unwrap())
}

/// The run passed: at least `min_written` rows (about 50 a second), each delivered to the
/// `per_scope` subscribers of its scope exactly once and to no one else.
fn every_row_reached_its_scope_once(summary: &serde_json::Value, per_scope: u64, min_written: u64) {
    assert_eq!(summary["pass"], true, "{summary}");
    for field in ["missing", "duplicated", "foreign", "http_errors"] {
        assert_eq!(summary[field], 0, "{field}: {summary}");
    }
    let written = summary["written"].as_u64().unwrap();
    assert!(written >= min_written, "about 50 rows/s were written: {written}");
    assert_eq!(summary["delivered"].as_u64(), Some(written * per_scope), "{summary}");
}

#[test]
fn a_short_local_run_delivers_every_event_to_exactly_its_scope_and_writes_the_report() {
    let out = std::env::temp_dir().join(format!("loadtest-test-{}", std::process::id()));
    let (summary, html) = run_local(
        &["--subscribers", "200", "--scopes", "20", "--duration", "10s", "--write-rate", "50"]
            .iter()
            .chain(&["--mode", "mixed", "--idle-connections", "50"])
            .copied()
            .collect::<Vec<_>>(),
        &out,
    );
    assert_eq!(summary["schema"], 1);
    // Each row reached the 10 subscribers of its scope, and none the 50 idle connections.
    every_row_reached_its_scope_once(&summary, 10, 400);
    assert_eq!(summary["load"]["idle_connections"], 50);
    assert!(summary["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(summary["gateway"]["rss_mb_max"].as_f64().unwrap() > 0.0, "the local gateway's memory was sampled");
    assert!(html.contains("<svg") && html.contains("PASS") && html.ends_with("</html>\n"));
    assert_eq!(html.matches("<svg").count(), 6, "latency over time, histogram, events/s, connected, memory, steal");
    assert!(summary["commit_ms"]["p99"].as_f64().unwrap() > 0.0, "PostgreSQL's commit time was measured");
    let (delivery, latency) =
        (summary["delivery_ms"]["p50"].as_f64().unwrap(), summary["latency_ms"]["p50"].as_f64().unwrap());
    assert!(
        delivery > 0.0 && delivery <= latency,
        "commit → client ({delivery} ms) is part of send → client ({latency} ms)"
    );
    assert!(summary["machine"]["steal_percent_max"].as_f64().is_some(), "the machine's CPU steal was sampled");
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn a_short_memberships_run_moves_rows_in_and_out_and_every_user_ends_with_its_projects_rows() {
    let out = std::env::temp_dir().join(format!("loadtest-members-{}", std::process::id()));
    let (summary, html) = run_local(
        &["--scenario", "memberships", "--subscribers", "100", "--scopes", "20", "--duration", "8s"]
            .iter()
            .chain(&["--write-rate", "20", "--membership-rate", "10", "--mode", "mixed"])
            .copied()
            .collect::<Vec<_>>(),
        &out,
    );
    assert_eq!(summary["pass"], true, "{summary}");
    for field in ["missing", "stale", "duplicated", "foreign", "http_errors"] {
        assert_eq!(summary[field], 0, "{field}: {summary}");
    }
    let m = &summary["memberships"];
    assert!(m["changes"].as_u64().unwrap() >= 60, "about 10 changes/s for 8 s: {m}");
    assert!(m["move_ins"].as_u64().unwrap() >= 20, "joins brought their project's rows: {m}");
    assert!(m["move_in_latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["expected"], summary["delivered"], "every user holds exactly its projects' rows");
    assert!(html.contains("Move-in latency") && out.join("gateway.log").is_file());
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn a_short_run_of_the_official_client_delivers_every_event_to_exactly_its_scope() {
    let out = std::env::temp_dir().join(format!("loadtest-official-{}", std::process::id()));
    let args =
        ["--client", "official", "--subscribers", "40", "--scopes", "8", "--duration", "5s", "--write-rate", "50"];
    let (summary, _) = run_local(&args.iter().chain(&["--idle-connections", "10"]).copied().collect::<Vec<_>>(), &out);
    assert_eq!(summary["load"]["client"], "official");
    every_row_reached_its_scope_once(&summary, 5, 200);
    assert!(summary["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_dir_all(out);
}
