//! Plain requests to a gateway and what their answers said.

use std::sync::OnceLock;

use serde_json::Value;

/// One HTTP client for the whole test process: building a client reads the platform's TLS
/// roots, which in a debug build costs more than a request to the gateway. It keeps no idle
/// connection, so none outlives the test (and its runtime) that opened it.
pub fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        gateway::install_tls_provider();
        reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("an HTTP client")
    })
}

/// What a response told the follower.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

/// An error body's reason: its message and, for a 400 (Electric's shape: `message` is
/// "Invalid request"), what `errors` says of each parameter.
pub fn reason(body: &Value) -> String {
    let mut out = body["message"].as_str().unwrap_or_default().to_string();
    for (param, said) in body["errors"].as_object().into_iter().flatten() {
        out.push_str(&format!("; {param}: {said}"));
    }
    out
}

/// `s` encoded for a query string.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub async fn get(url: &str) -> Response {
    get_as(url, None).await
}

/// A GET with `Authorization: Bearer <token>` when a token is given.
pub async fn get_as(url: &str, token: Option<&str>) -> Response {
    let mut req = http().get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Response { status, headers, body }
}

/// The sum of a metric's samples on `/metrics` whose line holds every one of `labels`.
pub async fn metric_sum(base: &str, name: &str, labels: &[&str]) -> f64 {
    let text = http().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
