//! The chart's nginx caching tier (rendered by `helm template`, run with Debian's nginx) in
//! front of a local gateway: identical live requests collapse to one upstream request, SSE
//! passes through as it happens, and a cached answer never reaches another scope.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::auth::{SCHEMA, SECRET, jwt_gateway, token};
use testkit::{DEADLINE, Env, free_port, get_as, metric_sum};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/helm/gateway");

/// nginx with the chart's cache config, in front of `upstream`.
struct Cache {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Cache {
    fn start(upstream: &str, dir: &Path) -> Cache {
        let port = free_port();
        let helm = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
        let rendered = Command::new(&helm)
            .args(["template", "t", CHART, "--show-only", "templates/cache.yaml"])
            .args(["--set", "cache.enabled=true", "--set", &format!("cache.upstream={upstream}")])
            .args(["--set", &format!("cache.port={port}"), "--set", "config.long_poll_timeout_ms=1500"])
            .output()
            .unwrap_or_else(|e| panic!("{helm}: {e}; scripts/test.sh installs helm and sets HELM"));
        assert!(rendered.status.success(), "helm template: {}", String::from_utf8_lossy(&rendered.stderr));
        let conf = nginx_conf(&String::from_utf8(rendered.stdout).unwrap());
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("nginx");
        let child = Command::new(nginx)
            .args(["-p", dir.to_str().unwrap(), "-c", "nginx.conf", "-e", "stderr", "-g", "daemon off;"])
            .stderr(std::fs::File::create(dir.join("error.log")).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx (scripts/test.sh installs Debian's nginx)");
        Cache { child, port, dir: dir.into() }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("nginx exited with {status}: {}", std::fs::read_to_string(self.dir.join("error.log")).unwrap());
            }
            if testkit::http().get(format!("{}/healthz", self.base())).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "nginx did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        // TERM: the master stops its workers and exits (KILL left the workers running).
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// The `nginx.conf` block of the rendered ConfigMap.
fn nginx_conf(rendered: &str) -> String {
    let mut lines = rendered.lines().skip_while(|l| l.trim() != "nginx.conf: |").skip(1);
    let mut conf = String::new();
    for line in lines.by_ref() {
        if !line.is_empty() && !line.starts_with("    ") {
            break;
        }
        conf.push_str(line.strip_prefix("    ").unwrap_or(line));
        conf.push('\n');
    }
    assert!(conf.contains("proxy_cache_lock on;"), "no nginx.conf in:\n{rendered}");
    conf
}

fn orgs(body: &Value) -> BTreeSet<String> {
    body.as_array().unwrap().iter().filter_map(|m| m["value"]["org_id"].as_str().map(str::to_string)).collect()
}

#[tokio::test]
async fn the_cache_tier_collapses_live_requests_streams_sse_and_keeps_scopes_apart() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    // The tier keys on the caller, so the gateway may let it store authenticated answers.
    let gw = jwt_gateway(&env, &["--jwt-secret", SECRET, "--shared-cache-by-caller"]).await;
    let mut cache = Cache::start(&format!("127.0.0.1:{}", gw.port()), &env.pg.root().join("cache"));
    cache.ready().await;
    let (org1, org2) = (token(json!({"org_id": "org1"})), token(json!({"org_id": "org2"})));

    // One URL, two tokens: each gets its own scope, though the first answer is cached.
    let initial = format!("{}/v1/shape?table=todos&offset=-1", cache.base());
    let a = get_as(&initial, Some(&org1)).await;
    let b = get_as(&initial, Some(&org2)).await;
    let a_again = get_as(&initial, Some(&org1)).await;
    assert_eq!((a.status, b.status), (200, 200), "{} {}", a.body, b.body);
    assert_eq!(orgs(&a.body), BTreeSet::from(["org1".to_string()]));
    assert_eq!(orgs(&b.body), BTreeSet::from(["org2".to_string()]), "another token's cached answer leaked");
    assert_eq!(a_again.body, a.body);

    // Catch up, then 20 identical live requests wait on one upstream request.
    let handle = a.headers["electric-handle"].to_str().unwrap().to_string();
    let mut offset = a.headers["electric-offset"].to_str().unwrap().to_string();
    loop {
        let url = format!("{}/v1/shape?table=todos&handle={handle}&offset={offset}", cache.base());
        let r = get_as(&url, Some(&org1)).await;
        offset = r.headers["electric-offset"].to_str().unwrap().to_string();
        if r.headers.contains_key("electric-up-to-date") {
            break;
        }
    }
    let live = format!("{}/v1/shape?table=todos&handle={handle}&offset={offset}&live=true", cache.base());
    let before = metric_sum(&gw.base(), "gateway_http_requests_total", &["route=\"/v1/shape\""]).await;
    let waiting: Vec<_> = (0..20)
        .map(|_| {
            let (url, token) = (live.clone(), org1.clone());
            tokio::spawn(async move { get_as(&url, Some(&token)).await })
        })
        .collect();
    // The change is written once the cache's one upstream request waits at the gateway.
    let gateway = gw.base();
    testkit::wait_until("the collapsed live request waits at the gateway", || async {
        metric_sum(&gateway, "gateway_subscribers", &["mode=\"long_poll\""]).await >= 1.0
    })
    .await;
    env.sql("insert into todos values (1001, 'org1', 'live', 'x')").await;
    let mut bodies = BTreeSet::new();
    for w in waiting {
        let r = w.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        bodies.insert(r.body.to_string());
    }
    assert_eq!(bodies.len(), 1, "every waiter got the same answer");
    assert!(bodies.iter().next().unwrap().contains("1001"), "{bodies:?}");
    let upstream = metric_sum(&gw.base(), "gateway_http_requests_total", &["route=\"/v1/shape\""]).await - before;
    assert_eq!(upstream, 1.0, "20 identical live requests reached the gateway {upstream} times");

    // SSE through the cache: each change arrives as it happens, not when the stream ends.
    let sse = format!("{}/v1/shape?table=todos&handle={handle}&offset={offset}&live=true&live_sse=true", cache.base());
    let resp = testkit::http().get(&sse).bearer_auth(&org1).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    let opened = Instant::now();
    let mut inserted = None;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.next()).await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if inserted.is_none() && seen.contains("up-to-date") {
            env.sql("insert into todos values (1002, 'org1', 'over sse', 'x'), (1003, 'org2', 'other scope', 'x')")
                .await;
            inserted = Some(Instant::now());
        }
        if seen.contains("1002") {
            break;
        }
    }
    let inserted = inserted.expect("the stream opened with up-to-date");
    assert!(seen.contains("1002"), "the change never came: {seen}");
    assert!(
        inserted.elapsed() < Duration::from_secs(2) && opened.elapsed() < Duration::from_secs(5),
        "the change waited for the stream's end (buffered): {:?}",
        inserted.elapsed()
    );
    assert!(!seen.contains("1003"), "another scope's row came through: {seen}");
}
