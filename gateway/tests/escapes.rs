//! Scope escapes: a table of attempts to read beyond the caller's scope, each proven to see
//! nothing outside it (a refusal, or rows of the caller's scope only, never a column outside
//! the rule), and JWT extremes the auth suite does not already cover.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::auth::{SCHEMA, SECRET, jwt_gateway, token};
use testkit::{Env, get_as};

/// The org of every row in a shape response, and whether any hidden value came through.
fn seen(body: &Value) -> (BTreeSet<String>, bool) {
    let rows = body.as_array().map(|a| a.iter().filter(|m| m.get("key").is_some()).collect::<Vec<_>>());
    let orgs = rows.iter().flatten().filter_map(|m| m["value"]["org_id"].as_str().map(str::to_string)).collect();
    (orgs, body.to_string().contains("hush-"))
}

#[tokio::test]
async fn no_request_reads_beyond_the_callers_scope() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    let gw = jwt_gateway(&env, &["--jwt-secret", SECRET]).await;
    let org1 = token(json!({"org_id": "org1"}));
    let org2 = token(json!({"org_id": "org2"}));
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let wheres = [
        "org_id = 'org2'",
        "true OR org_id = 'org2'",
        "org_id = 'org1' OR org_id = 'org2'",
        "NOT (org_id = 'org1')",
        "org_id <> 'org1'",
        "org_id IN ('org1', 'org2')",
        "org_id = ANY(ARRAY['org1', 'org2'])",
        "1=1) OR (1=1",
        "org_id = 'org2' --",
        "org_id = 'org2' /* */ OR true",
        "org_id = 'org1'; select * from todos",
        "org_id::text = 'org2'",
        "org_id = 'org2'::text",
        "(select org_id from todos limit 1) = org_id",
        "exists (select 1 from todos)",
        "pg_sleep(1) is null",
        "set_config('role', 'postgres', false) = ''",
        "current_setting('is_superuser') = 'on'",
        "lower(org_id) = 'org2'",
        "оrg_id = 'org2'",
        "\"org_id\" = 'org2' OR \"ORG_ID\" = 'org2'",
        "secret = 'hush-2'",
        "secret IS NOT NULL",
        "org_id = $1",
        "title = 'x' OR org_id = $1",
        &format!("{}org_id = 'org2'{}", "(".repeat(100), ")".repeat(100)),
        &"org_id = 'org2' OR ".repeat(2000),
    ];
    let mut outcomes = Vec::new();
    for filter in wheres {
        for params in ["", "&params[1]=org2", "&params[1]=org2' OR '1'='1", "&params[1]=org2&params[2]=org3"] {
            let url = format!("{}/v1/shape?table=todos&offset=-1&where={}{params}", gw.base(), enc(filter));
            let r = get_as(&url, Some(&org1)).await;
            let (orgs, hidden) = seen(&r.body);
            assert!(r.status == 200 || (400..500).contains(&r.status), "{filter} {params}: {} {}", r.status, r.body);
            assert!(orgs.iter().all(|o| o == "org1"), "{filter} {params}: saw {orgs:?}");
            assert!(!hidden, "{filter} {params}: a column outside the rule came through");
            outcomes.push(r.status);
        }
    }
    assert!(outcomes.contains(&200) && outcomes.iter().any(|s| *s >= 400), "both kinds of outcome occur");

    // Columns outside the rule, asked for directly.
    for columns in ["id,secret", "secret", "*", "id,org_id,title,secret", "id,\"secret\""] {
        let url = format!("{}/v1/shape?table=todos&offset=-1&columns={}", gw.base(), enc(columns));
        let r = get_as(&url, Some(&org1)).await;
        assert!(!seen(&r.body).1, "columns={columns}: {}", r.body);
    }

    // Another scope's handle and offsets, replayed with this token.
    let theirs = get_as(&format!("{}/v1/shape?table=todos&offset=-1", gw.base()), Some(&org2)).await;
    let handle = theirs.headers["electric-handle"].to_str().unwrap();
    let offset = theirs.headers["electric-offset"].to_str().unwrap();
    for (o, live) in [(offset, ""), ("0_0", ""), (offset, "&live=true"), ("-1", "")] {
        let url = format!("{}/v1/shape?table=todos&handle={handle}&offset={o}{live}", gw.base());
        let r = get_as(&url, Some(&org1)).await;
        assert!(seen(&r.body).0.iter().all(|org| org == "org1"), "handle {handle} offset {o}: {}", r.body);
        if o != "-1" {
            // From the start the handle is only a hint; past it, it must be the caller's own.
            assert_eq!(r.status, 409, "another scope's handle is never served: {}", r.body);
        }
    }
}

#[tokio::test]
async fn jwt_extremes_are_refused_cleanly() {
    let env = Env::new().await;
    env.sql(SCHEMA).await;
    // A JWKS with one RSA key, so tokens are judged by their kid and signature.
    let rsa = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa-private.pem")).unwrap();
    let rsa = jsonwebtoken::EncodingKey::from_rsa_pem(&rsa).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa, jsonwebtoken::Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("r1".into());
    let jwks = env.data_dir.with_extension("jwks.json");
    std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).unwrap();
    let gw = jwt_gateway(&env, &["--jwt-secret", SECRET]).await;
    let url = format!("{}/v1/shape?table=todos&offset=-1", gw.base());
    let huge_claim = token(json!({"org_id": "org1", "pad": "x".repeat(40_000)}));
    let r = get_as(&url, Some(&huge_claim)).await;
    assert_eq!(r.status, 431, "a token past the header limit: {}", r.body);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    for kid in ["../../../../etc/passwd", "/dev/zero", "' OR 1=1 --", &"k".repeat(5000)] {
        header.kid = Some(kid.into());
        let claims = json!({"org_id": "org1", "exp": 4_000_000_000u64});
        let t =
            jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
        // A shared secret ignores kid; the token is judged by its signature alone.
        assert_eq!(get_as(&url, Some(&t)).await.status, 200, "kid {kid:?}");
    }
    drop(gw);
    let gw = jwt_gateway(&env, &["--jwt-jwks", jwks.to_str().unwrap()]).await;
    let url = format!("{}/v1/shape?table=todos&offset=-1", gw.base());
    for kid in ["../../../../etc/passwd", "/dev/zero", "file:///etc/passwd", "http://127.0.0.1:1/x"] {
        header.kid = Some(kid.into());
        let t = jsonwebtoken::encode(
            &header,
            &json!({"org_id": "org1", "exp": 4_000_000_000u64}),
            &jsonwebtoken::EncodingKey::from_secret(b"guess"),
        )
        .unwrap();
        let r = get_as(&url, Some(&t)).await;
        assert_eq!(r.status, 401, "kid {kid:?} with a JWKS: {}", r.body);
    }
    assert!(gw.log().lines().all(|l| !l.contains("root:")), "no file was read for a kid");
}
