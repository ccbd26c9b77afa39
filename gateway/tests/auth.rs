//! `--auth jwt` with `[[table]]` rules: each caller sees exactly its scope, scopes share
//! logs, and every bad token or forbidden ask gets its status and reason.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use testkit::{Env, Follower, Gateway, get_as};

pub const SECRET: &str = "test-secret-of-reasonable-length-0123456789";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

pub const SCHEMA: &str = "
create table todos (id int8 primary key, org_id text not null, title text, secret text);
insert into todos select i, 'org' || (i % 10), 't' || i, 'hush-' || i from generate_series(1, 100) i;
create table multi (id int4 primary key, org_id text not null);
insert into multi select i, 'm' || (i % 4) from generate_series(1, 20) i;
create table teams (id int4 primary key, team int4 not null);
insert into teams select i, i % 3 from generate_series(1, 9) i;
create table hidden (id int4 primary key);
";

pub const RULES: &str = r#"
[[table]]
name = "public.todos"
scope = "org_id = :org_id"
columns = ["id", "org_id", "title"]

[[table]]
name = "multi"
scope = "org_id IN :orgs"

[[table]]
name = "public.teams"
scope = "team = :team"
"#;

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An HS256 token with `claims` plus an `exp` an hour ahead and a `sub` (unless given).
pub fn token(claims: Value) -> String {
    let mut c = claims.as_object().unwrap().clone();
    c.entry("exp").or_insert(json!(now() + 3600));
    c.entry("sub").or_insert(json!("tester"));
    encode(&Header::new(Algorithm::HS256), &c, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A gateway with `--auth jwt`, the test rules, and `extra` flags.
pub async fn jwt_gateway(env: &Env, extra: &[&str]) -> Gateway {
    let config = env.data_dir.with_extension("toml");
    std::fs::write(&config, RULES).unwrap();
    let mut args = vec!["--auth", "jwt", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut gw = env.gateway_with(&args);
    gw.ready().await;
    gw
}

/// Unpadded base64url, for hand-made (unsigned) tokens.
fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn ids(f: &Follower) -> BTreeSet<i64> {
    f.rows.values().map(|r| r["id"].as_str().unwrap().parse().unwrap()).collect()
}

#[tokio::test]
async fn each_token_sees_its_scope_and_equal_scopes_share_one_log() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = jwt_gateway(&env, &["--jwt-secret", SECRET]).await;
    let (a, b) = (token(json!({"org_id": "org1"})), token(json!({"org_id": "org2"})));

    // A client where that tries to widen only narrows.
    let mut fa = Follower::new(&gw, "table=todos&where=org_id+%3D+%27org2%27+OR+true").with_token(&a);
    let mut fb = Follower::new(&gw, "table=todos").with_token(&b);
    fa.sync().await;
    fb.sync().await;
    assert_eq!(ids(&fa), (1..=100).filter(|i| i % 10 == 1).collect());
    assert_eq!(ids(&fb), (1..=100).filter(|i| i % 10 == 2).collect());
    let row = fa.rows.values().next().unwrap();
    assert!(row.get("secret").is_none(), "columns outside the rule are never sent: {row:?}");

    // A row moving from org1 to org2 leaves A and reaches B, live.
    env.sql("update todos set org_id = 'org2' where id = 1").await;
    fa.live_until(|rows| !rows.values().any(|r| r["id"] == "1")).await;
    fb.live_until(|rows| rows.values().any(|r| r["id"] == "1")).await;

    // A handle is bound to its scope: B presenting A's handle is sent to its own shape, so a
    // forged URL never reads another scope through the gateway.
    let forged = get_as(
        &format!("{}/v1/shape?table=todos&offset={}&handle={}", gw.base(), fa.offset, fa.handle.clone().unwrap()),
        Some(&b),
    )
    .await;
    assert_eq!(forged.status, 409);
    assert_eq!(forged.headers["electric-handle"].to_str().unwrap(), fb.handle.clone().unwrap());

    // Subset snapshots stay inside the scope and the readable columns.
    let subset_url = |q: &str| format!("{}/v1/shape?table=todos&offset=-1&{q}", gw.base());
    let page = get_as(&subset_url("subset__order_by=id&subset__limit=50"), Some(&a)).await;
    let orgs: BTreeSet<&str> =
        page.body["data"].as_array().unwrap().iter().map(|m| m["value"]["org_id"].as_str().unwrap()).collect();
    assert_eq!(orgs, BTreeSet::from(["org1"]), "{}", page.body);
    assert_eq!(get_as(&subset_url("subset__where=secret+%3D+%27hush-1%27"), Some(&a)).await.status, 403);

    // 1,000 tokens over 10 orgs: 10 shapes, not 1,000.
    let base = gw.base();
    let handles: BTreeSet<String> = futures::stream::iter(0..1000)
        .map(|i| {
            let (base, t) = (base.clone(), token(json!({"org_id": format!("org{}", i % 10), "sub": format!("u{i}")})));
            async move {
                let r = get_as(&format!("{base}/v1/shape?table=todos&offset=-1"), Some(&t)).await;
                assert_eq!(r.status, 200, "{}", r.body);
                assert!(r.headers.get_all("vary").iter().any(|v| v == "authorization"), "responses vary by token");
                r.headers["electric-handle"].to_str().unwrap().to_string()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(handles.len(), 10, "one shared log per org");
    let shape_dirs = std::fs::read_dir(env.data_dir.join("shapes")).unwrap().count();
    assert!(shape_dirs <= 12, "{shape_dirs} shape logs on disk");

    // Array and numeric claims.
    let multi =
        get_as(&format!("{base}/v1/shape?table=multi&offset=-1"), Some(&token(json!({"orgs": ["m1", "m3"]})))).await;
    let orgs: BTreeSet<&str> =
        multi.body.as_array().unwrap().iter().filter_map(|m| m["value"]["org_id"].as_str()).collect();
    assert_eq!(orgs, BTreeSet::from(["m1", "m3"]));
    let teams = get_as(&format!("{base}/v1/shape?table=teams&offset=-1"), Some(&token(json!({"team": 2})))).await;
    let rows: Vec<&Value> = teams.body.as_array().unwrap().iter().filter(|m| m.get("key").is_some()).collect();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|m| m["value"]["team"] == "2"));

    // Admins read unscoped and may drop shapes; others may not.
    let admin = token(json!({"gateway_admin": true}));
    let mut all = Follower::new(&gw, "table=todos").with_token(&admin);
    all.sync().await;
    assert_eq!(all.rows.len(), 100);
    assert!(all.rows.values().all(|r| r.get("secret").is_some()));
    let client = testkit::http();
    let del = |t: &str| client.delete(format!("{base}/v1/shape?table=todos")).bearer_auth(t).send();
    assert_eq!(del(&a).await.unwrap().status(), 403);
    // Nor by a handle alone (another tenant's shape, named without its table).
    let handle = all.handle.clone().unwrap();
    let by_handle = client.delete(format!("{base}/v1/shape?handle={handle}")).bearer_auth(&a).send().await.unwrap();
    assert_eq!(by_handle.status(), 403);
    let still =
        get_as(&format!("{base}/v1/shape?table=todos&offset={}&handle={handle}", all.offset), Some(&admin)).await;
    assert_eq!(still.status, 200, "the shape lives on: {}", still.body);
    assert_eq!(del(&admin).await.unwrap().status(), 202);
}

#[tokio::test]
async fn bad_tokens_get_401_and_forbidden_asks_403_with_the_reason() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = jwt_gateway(
        &env,
        &[
            "--jwt-secret",
            SECRET,
            "--jwt-audience",
            "sync",
            "--jwt-issuer",
            "https://issuer",
            "--cors-origins",
            "https://app.example",
        ],
    )
    .await;
    let good = |extra: Value| {
        let mut c = json!({"org_id": "org1", "aud": "sync", "iss": "https://issuer"});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        token(c)
    };
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(format!("{FIXTURES}/rsa-private.pem")).unwrap()).unwrap();
    let claims = json!({"org_id": "org1", "aud": "sync", "iss": "https://issuer", "exp": now() + 600});
    let rs256 = encode(&Header::new(Algorithm::RS256), &claims, &rsa).unwrap();
    let wrong_secret = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"nope")).unwrap();
    let unsigned =
        format!("{}.{}.", base64url(br#"{"alg":"none","typ":"JWT"}"#), base64url(claims.to_string().as_bytes()));
    let cases: Vec<(Option<String>, &str, u16, &str)> = vec![
        (None, "table=todos", 401, "missing token"),
        (Some("not-a-jwt".into()), "table=todos", 401, "malformed"),
        (Some(good(json!({"exp": now() - 120}))), "table=todos", 401, "expired"),
        (Some(good(json!({"nbf": now() + 600}))), "table=todos", 401, "not valid yet"),
        (Some(good(json!({"iat": now() + 600}))), "table=todos", 401, "not valid yet"),
        (Some(good(json!({"aud": "other"}))), "table=todos", 401, "aud"),
        (Some(good(json!({"iss": "https://evil"}))), "table=todos", 401, "iss"),
        (Some(wrong_secret), "table=todos", 401, "signature"),
        (Some(rs256), "table=todos", 401, "RS256"),
        (Some(unsigned), "table=todos", 401, "alg"),
        (Some(good(json!({}))), "table=hidden", 403, "no access rule"),
        (Some(good(json!({}))), "table=todos&columns=id,secret", 403, "\"secret\""),
        (Some(good(json!({}))), "table=todos&where=secret+%3D+%27hush-1%27", 403, "\"secret\""),
        (Some(good(json!({"org_id": null}))), "table=todos", 403, "org_id"),
        (Some(good(json!({"orgs": {"a": 1}}))), "table=multi", 403, "orgs"),
        (Some(good(json!({"team": "x"}))), "table=teams", 403, "claims do not fit"),
    ];
    for (t, q, status, needle) in cases {
        let r = get_as(&format!("{}/v1/shape?{q}&offset=-1", gw.base()), t.as_deref()).await;
        assert_eq!(r.status, status, "{q} / {needle}: {}", r.body);
        let msg = testkit::reason(&r.body);
        assert!(msg.to_lowercase().contains(&needle.to_lowercase()), "{needle}: {msg}");
        if let Some(t) = &t {
            assert!(!msg.contains(t.as_str()), "the token is never echoed");
        }
        if status == 401 {
            assert_eq!(r.headers["www-authenticate"], "Bearer");
        }
    }
    // Only the configured origin is allowed.
    let client = testkit::http();
    let from = |origin: &'static str| {
        client
            .get(format!("{}/v1/shape?table=todos&offset=-1", gw.base()))
            .bearer_auth(good(json!({})))
            .header("origin", origin)
            .send()
    };
    let allowed = from("https://app.example").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example");
    let evil = from("https://evil.example").await.unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());

    let log = gw.log();
    assert!(!log.contains("eyJ"), "tokens never reach the log");
    assert!(!log.contains("hush-"), "row values never reach the log");
}

#[tokio::test]
async fn public_keys_and_jwks_verify_their_own_algorithms_only() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(format!("{FIXTURES}/rsa-private.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(format!("{FIXTURES}/ec-private.pem")).unwrap()).unwrap();
    let claims = json!({"org_id": "org3", "exp": now() + 600});
    let sign = |alg: Algorithm, key: &EncodingKey, kid: Option<&str>| {
        let mut h = Header::new(alg);
        h.kid = kid.map(String::from);
        encode(&h, &claims, key).unwrap()
    };
    // The public key's PEM used as an HMAC secret: the classic algorithm confusion.
    let public_pem = std::fs::read(format!("{FIXTURES}/rsa-public.pem")).unwrap();
    let confused = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&public_pem)).unwrap();

    let mut gw = jwt_gateway(&env, &["--jwt-public-key", &format!("{FIXTURES}/rsa-public.pem")]).await;
    let shape = |gw: &Gateway| format!("{}/v1/shape?table=todos&offset=-1", gw.base());
    assert_eq!(get_as(&shape(&gw), Some(&sign(Algorithm::RS256, &rsa, None))).await.status, 200);
    assert_eq!(get_as(&shape(&gw), Some(&sign(Algorithm::PS256, &rsa, None))).await.status, 200);
    assert_eq!(get_as(&shape(&gw), Some(&confused)).await.status, 401);
    assert_eq!(get_as(&shape(&gw), Some(&sign(Algorithm::ES256, &ec, None))).await.status, 401);
    gw.terminate();

    // A JWKS file with an RSA and an EC key, chosen by kid.
    let mut rsa_jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
    rsa_jwk.common.key_id = Some("r1".into());
    let mut ec_jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
    ec_jwk.common.key_id = Some("e1".into());
    let jwks = env.data_dir.with_extension("jwks.json");
    std::fs::write(&jwks, serde_json::to_string(&json!({"keys": [rsa_jwk, ec_jwk]})).unwrap()).unwrap();
    let gw = jwt_gateway(&env, &["--jwt-jwks", jwks.to_str().unwrap()]).await;
    assert_eq!(get_as(&shape(&gw), Some(&sign(Algorithm::RS256, &rsa, Some("r1")))).await.status, 200);
    assert_eq!(get_as(&shape(&gw), Some(&sign(Algorithm::ES256, &ec, Some("e1")))).await.status, 200);
    let wrong_kid = get_as(&shape(&gw), Some(&sign(Algorithm::ES256, &ec, Some("r1")))).await;
    assert_eq!(wrong_kid.status, 401, "{}", wrong_kid.body);
    let unknown = get_as(&shape(&gw), Some(&sign(Algorithm::RS256, &rsa, Some("zz")))).await;
    assert!(unknown.body["message"].as_str().unwrap().contains("zz"), "{}", unknown.body);
    drop(gw);

    // The same set served over HTTP, as identity providers publish it.
    let document = std::fs::read_to_string(&jwks).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/.well-known/jwks.json", axum::routing::get(move || async move { document }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let gw = jwt_gateway(&env, &["--jwt-jwks", &format!("http://{addr}/.well-known/jwks.json")]).await;
    assert_eq!(get_as(&shape(&gw), Some(&sign(Algorithm::ES256, &ec, Some("e1")))).await.status, 200);
}

#[tokio::test]
async fn an_sse_stream_ends_when_its_token_expires() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = jwt_gateway(&env, &["--jwt-secret", SECRET, "--sse-timeout-s", "60", "--jwt-leeway-s", "1"]).await;
    let t = token(json!({"org_id": "org1", "exp": now() + 4}));
    let first = get_as(&format!("{}/v1/shape?table=todos&offset=-1", gw.base()), Some(&t)).await;
    let handle = first.headers["electric-handle"].to_str().unwrap().to_string();
    let url =
        format!("{}/v1/shape?table=todos&offset=0_inf&handle={handle}&live=true&live_sse=true&cursor=", gw.base());
    let started = Instant::now();
    let resp = testkit::http().get(url).bearer_auth(&t).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let ended = tokio::time::timeout(Duration::from_secs(30), async { while body.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the stream outlived its token");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "ended at the token's exp plus the leeway, not the SSE timeout"
    );
}

#[tokio::test]
async fn a_broken_rule_stops_the_gateway_at_start_naming_it() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    for (rules, needle) in [
        ("[[table]]\nname = \"todos\"\nscope = \"nope = :org\"", "rule #1 (todos): scope: unknown column"),
        ("[[table]]\nname = \"todos\"\ncolumns = [\"title\"]", "primary key"),
        ("[[table]]\nname = \"ghost\"", "does not exist"),
        ("[[table]]\nname = \"todos\"\nscope = \"org_id = : org\"", "claim name"),
    ] {
        let config = env.data_dir.with_extension("toml");
        std::fs::write(&config, rules).unwrap();
        let mut gw = env.gateway_with(&["--auth", "jwt", "--jwt-secret", SECRET, "--config", config.to_str().unwrap()]);
        assert_eq!(gw.exit_within(Duration::from_secs(20)).await, Some(1), "{rules}");
        assert!(gw.log().contains(needle), "{needle}: {}", gw.log());
    }
}
