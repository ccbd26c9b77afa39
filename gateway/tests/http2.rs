//! The HTTP/2 path: a proxy that speaks h2c to the gateway (HAProxy's `proto h2`, Envoy,
//! Caddy's `versions h2c`), or a client that does, multiplexes many subscribers over one
//! connection. Each then costs a stream, not a connection with hyper's HTTP/1.1 buffers
//! (see the README's memory figures).

use std::time::Duration;

use futures::StreamExt;
use testkit::{Env, Gateway, metric_sum, wait_until};

/// TCP connections to `port` from this machine, as `/proc/net/tcp` lists them (state 01,
/// established, with `port` as the remote end: the clients' side).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let remote = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2].ends_with(&remote) && f[3] == "01"
        })
        .count()
}

#[tokio::test]
async fn fifty_long_polls_and_an_sse_stream_share_one_h2c_connection_and_each_gets_the_change() {
    let env = Env::new().await;
    env.sql("create table notes (id int8 primary key, body text)").await;
    let mut gw = Gateway::start(&env.url, &env.data_dir, &["--long-poll-timeout-ms", "20000"]);
    gw.ready().await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let base = gw.base();
    let first = h2.get(format!("{base}/v1/shape?table=notes&offset=-1")).send().await.unwrap();
    assert_eq!((first.status().as_u16(), first.version()), (200, reqwest::Version::HTTP_2));
    let handle = first.headers()["electric-handle"].to_str().unwrap().to_string();
    let mut offset = first.headers()["electric-offset"].to_str().unwrap().to_string();
    while !h2
        .get(format!("{base}/v1/shape?table=notes&handle={handle}&offset={offset}"))
        .send()
        .await
        .map(|r| {
            offset = r.headers()["electric-offset"].to_str().unwrap().to_string();
            r.headers().contains_key("electric-up-to-date")
        })
        .unwrap()
    {}

    let live = format!("{base}/v1/shape?table=notes&handle={handle}&offset={offset}&live=true");
    let polls: Vec<_> = (0..50)
        .map(|_| {
            let (h2, url) = (h2.clone(), live.clone());
            tokio::spawn(async move {
                let r = h2.get(url).send().await.unwrap();
                assert_eq!(r.version(), reqwest::Version::HTTP_2);
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    let sse = h2.get(format!("{live}&live_sse=true")).send().await.unwrap();
    assert_eq!((sse.status().as_u16(), sse.version()), (200, reqwest::Version::HTTP_2));
    wait_until("every long-poll waits at the gateway", || async {
        metric_sum(&base, "gateway_subscribers", &["mode=\"long_poll\""]).await >= 50.0
    })
    .await;
    // One connection for the 51 subscribers, one (HTTP/1.1) for the metrics above.
    let connections = connections_to(gw.port());
    assert!(connections <= 2, "51 subscribers over h2c held {connections} connections");

    env.sql("insert into notes values (7, 'over h2')").await;
    for poll in polls {
        let (status, body) = poll.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("over h2"), "{body}");
    }
    let mut events = sse.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("over h2") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap().unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}
