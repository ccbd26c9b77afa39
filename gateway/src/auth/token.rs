//! JWT verification: the signature against the configured keys (only the algorithms of
//! that key's family), `exp` required, `nbf` and `iat` with one leeway for clock skew
//! (`--jwt-leeway-s`), and optional `iss`/`aud`. A token is valid until `exp` plus that
//! leeway: requests are accepted and live streams end by the same instant. Verified tokens
//! are remembered until then, so a client polling with the same token pays for the signature
//! once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use serde_json::{Map, Value};

use super::AuthError;
use super::keys::{Key, KeySource};

/// Clock skew tolerated on `exp`, `nbf` and `iat` unless `--jwt-leeway-s` says otherwise.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// The last second of year 9999: an `exp` past it is not a time but an attempt to make the
/// token immortal (or to overflow the clock).
const LATEST_EXP: u64 = 253_402_300_799;
/// Verified tokens remembered; past this the memory is cleared.
const CACHE_ENTRIES: usize = 10_000;

/// A verified token's claims.
#[derive(Debug)]
pub struct Claims {
    pub map: Map<String, Value>,
    /// `exp` plus the leeway: the last instant the token is honoured.
    pub valid_until: SystemTime,
}

impl Claims {
    pub fn is_admin(&self) -> bool {
        self.map.get("gateway_admin") == Some(&Value::Bool(true))
    }
}

pub struct Verifier {
    keys: KeySource,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
    cache: Mutex<HashMap<Box<str>, Arc<Claims>>>,
}

impl Verifier {
    pub fn new(keys: KeySource, issuer: Option<String>, audience: Option<String>, leeway_secs: u64) -> Verifier {
        Verifier { keys, issuer, audience, leeway_secs, cache: Mutex::new(HashMap::new()) }
    }

    pub fn keys(&self) -> &KeySource {
        &self.keys
    }

    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        let now = SystemTime::now();
        if let Some(claims) = self.cache.lock().unwrap().get(token) {
            if claims.valid_until > now {
                return Ok(claims.clone());
            }
            return Err(AuthError::Expired);
        }
        let header = decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm | ErrorKind::Json(_) => {
                AuthError::Rejected(
                    "the token's header names no supported alg (unsigned tokens, alg none, are never accepted)".into(),
                )
            }
            _ => AuthError::Malformed,
        })?;
        let checked = match &self.keys {
            KeySource::Single(key) => self.check(token, header.alg, key),
            KeySource::Jwks(jwks) => jwks
                .with_key(header.kid.as_deref(), |key| self.check(token, header.alg, key))
                .await
                .unwrap_or_else(|| {
                    Err(AuthError::Rejected(match &header.kid {
                        Some(kid) => format!("no key with kid {kid:?} in the configured JWKS"),
                        None => "the token has no kid and the JWKS has several keys".into(),
                    }))
                }),
        };
        let map = checked?;
        let seconds = |name: &str| map.get(name).and_then(Value::as_u64);
        let exp = seconds("exp").ok_or(AuthError::Malformed)?;
        if exp > LATEST_EXP {
            return Err(AuthError::Rejected("the token's exp is not a plausible time (after year 9999)".into()));
        }
        let now_secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if seconds("iat").is_some_and(|iat| iat > now_secs.saturating_add(self.leeway_secs)) {
            return Err(AuthError::NotYetValid);
        }
        // `exp` itself was checked, with the same leeway, by the JWT validation above.
        let valid_until = UNIX_EPOCH + Duration::from_secs(exp.saturating_add(self.leeway_secs));
        let claims = Arc::new(Claims { map, valid_until });
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.valid_until > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(token.into(), claims.clone());
        Ok(claims)
    }

    fn check(&self, token: &str, alg: Algorithm, key: &Key) -> Result<Map<String, Value>, AuthError> {
        if !key.algorithms.contains(&alg) {
            return Err(AuthError::Rejected(format!(
                "the token is signed with {alg:?}, but the configured key verifies only {:?}",
                key.algorithms
            )));
        }
        let mut v = Validation::new(alg);
        v.leeway = self.leeway_secs;
        v.set_required_spec_claims(&["exp"]);
        v.validate_nbf = true;
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        decode::<Map<String, Value>>(token, &key.key, &v).map(|d| d.claims).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidIssuer => {
                AuthError::Rejected(format!("the token's iss is not {}", self.issuer.as_deref().unwrap_or_default()))
            }
            ErrorKind::InvalidAudience => AuthError::Rejected(format!(
                "the token's aud does not include {}",
                self.audience.as_deref().unwrap_or_default()
            )),
            ErrorKind::MissingRequiredClaim(c) => AuthError::Rejected(format!("the token has no {c} claim")),
            ErrorKind::InvalidAlgorithm => AuthError::Rejected(format!("{alg:?} does not fit the configured key")),
            _ => AuthError::Malformed,
        })
    }
}
