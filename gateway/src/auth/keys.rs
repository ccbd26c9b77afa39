//! Where token signatures are checked against: a shared secret (HS*), one PEM public key
//! (RS*/PS*, ES*, EdDSA), or a JWKS document from a file or URL, chosen by `kid` and
//! refreshed in the background and when an unknown `kid` shows up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

/// How often a JWKS is reloaded, and the least time between reloads on an unknown `kid`.
const JWKS_REFRESH: Duration = Duration::from_secs(600);
const JWKS_MIN_RELOAD: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("--jwt-public-key {path}: {problem}")]
    PublicKey { path: String, problem: String },
    #[error("--jwt-jwks {source_name}: {problem}")]
    Jwks { source_name: String, problem: String },
    #[error("--auth jwt needs a key: set --jwt-secret (HS256), --jwt-public-key (PEM) or --jwt-jwks (file or URL)")]
    Missing,
    #[error("set only one of --jwt-secret, --jwt-public-key and --jwt-jwks")]
    Several,
}

/// A verification key and the algorithms it may verify (never across families, so an
/// RSA public key can never be used as an HMAC secret).
pub struct Key {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

pub enum KeySource {
    Single(Key),
    Jwks(Jwks),
}

impl KeySource {
    pub fn from_settings(
        secret: Option<&str>,
        public_key: Option<&PathBuf>,
        jwks: Option<&str>,
    ) -> Result<KeySource, KeyError> {
        match (secret, public_key, jwks) {
            (Some(s), None, None) => Ok(KeySource::Single(Key {
                key: DecodingKey::from_secret(s.as_bytes()),
                algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            })),
            (None, Some(p), None) => {
                let problem = |problem: String| KeyError::PublicKey { path: p.display().to_string(), problem };
                let pem = std::fs::read(p).map_err(|e| problem(e.to_string()))?;
                pem_key(&pem)
                    .map(KeySource::Single)
                    .ok_or_else(|| problem("not a PEM RSA, EC (P-256/P-384) or Ed25519 public key".into()))
            }
            (None, None, Some(source)) => Ok(KeySource::Jwks(Jwks::new(source)?)),
            (None, None, None) => Err(KeyError::Missing),
            _ => Err(KeyError::Several),
        }
    }
}

fn pem_key(pem: &[u8]) -> Option<Key> {
    use Algorithm::*;
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some(Key { key, algorithms: vec![RS256, RS384, RS512, PS256, PS384, PS512] });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Some(Key { key, algorithms: vec![ES256, ES384] });
    }
    DecodingKey::from_ed_pem(pem).ok().map(|key| Key { key, algorithms: vec![EdDSA] })
}

/// A JWKS and where it came from.
pub struct Jwks {
    source: JwksSource,
    state: RwLock<JwksState>,
    http: Option<reqwest::Client>,
}

#[derive(Clone)]
enum JwksSource {
    File(PathBuf),
    Url(String),
}

struct JwksState {
    keys: HashMap<String, Key>,
    /// The key of a set with a single key, used for tokens without `kid`.
    only: Option<String>,
    loaded: Option<Instant>,
}

impl Jwks {
    fn new(source: &str) -> Result<Jwks, KeyError> {
        let (source, http) = if source.starts_with("https://") || source.starts_with("http://") {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| KeyError::Jwks { source_name: source.into(), problem: e.to_string() })?;
            (JwksSource::Url(source.to_string()), Some(client))
        } else {
            (JwksSource::File(PathBuf::from(source)), None)
        };
        Ok(Jwks { source, state: RwLock::new(JwksState { keys: HashMap::new(), only: None, loaded: None }), http })
    }

    fn source_name(&self) -> String {
        match &self.source {
            JwksSource::File(p) => p.display().to_string(),
            JwksSource::Url(u) => u.clone(),
        }
    }

    /// Loads (or reloads) the key set; on failure the previous keys stay in use.
    pub async fn load(&self) -> Result<usize, KeyError> {
        let problem = |problem: String| KeyError::Jwks { source_name: self.source_name(), problem };
        let body = match (&self.source, &self.http) {
            (JwksSource::File(p), _) => tokio::fs::read(p).await.map_err(|e| problem(e.to_string()))?,
            (JwksSource::Url(u), Some(http)) => {
                let resp = http.get(u).send().await.map_err(|e| problem(e.to_string()))?;
                if !resp.status().is_success() {
                    return Err(problem(format!("HTTP {}", resp.status())));
                }
                resp.bytes().await.map_err(|e| problem(e.to_string()))?.to_vec()
            }
            (JwksSource::Url(_), None) => unreachable!("URL sources get a client"),
        };
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| problem(format!("not a JWKS document: {e}")))?;
        let mut keys = HashMap::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            let declared = jwk.common.key_algorithm.and_then(|a| Algorithm::try_from(a).ok());
            let algorithms = match (declared, &jwk.algorithm) {
                (Some(a), _) => vec![a],
                (None, AlgorithmParameters::RSA(_)) => vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
                (None, AlgorithmParameters::EllipticCurve(ec)) => match ec.curve {
                    EllipticCurve::P256 => vec![Algorithm::ES256],
                    EllipticCurve::P384 => vec![Algorithm::ES384],
                    _ => continue,
                },
                (None, AlgorithmParameters::OctetKeyPair(_)) => vec![Algorithm::EdDSA],
                // Symmetric keys do not belong in a published key set.
                (None, _) => continue,
            };
            let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
            keys.insert(kid, Key { key, algorithms });
        }
        if keys.is_empty() {
            return Err(problem("no usable public keys (RSA, EC P-256/P-384, Ed25519)".into()));
        }
        let count = keys.len();
        let mut state = self.state.write().unwrap();
        state.only = if count == 1 { keys.keys().next().cloned() } else { None };
        state.keys = keys;
        state.loaded = Some(Instant::now());
        Ok(count)
    }

    /// Runs `f` with the key for `kid` (the only key when the token names none), reloading
    /// the set once when the `kid` is unknown and the set was not just loaded.
    pub async fn with_key<T>(&self, kid: Option<&str>, f: impl Fn(&Key) -> T) -> Option<T> {
        let find = |state: &JwksState| -> Option<T> {
            let kid = kid.map(str::to_string).or_else(|| state.only.clone())?;
            state.keys.get(&kid).map(&f)
        };
        if let Some(found) = find(&self.state.read().unwrap()) {
            return Some(found);
        }
        let stale = self.state.read().unwrap().loaded.is_none_or(|at| at.elapsed() >= JWKS_MIN_RELOAD);
        if stale && let Err(e) = self.load().await {
            tracing::warn!(error = %e, "reloading the JWKS failed");
        }
        find(&self.state.read().unwrap())
    }

    /// Reloads the set periodically, for as long as the task runs (its owner stops it).
    pub async fn refresh(&self) {
        loop {
            tokio::time::sleep(JWKS_REFRESH).await;
            if let Err(e) = self.load().await {
                tracing::warn!(error = %e, "refreshing the JWKS failed; keeping the previous keys");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn jwks_with(kid: &str) -> String {
        let pem = std::fs::read(format!("{FIXTURES}/ec-private.pem")).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::json!({"keys": [jwk]}).to_string()
    }

    #[tokio::test]
    async fn an_unknown_kid_reloads_the_set_but_not_too_often() {
        let path = std::env::temp_dir().join(format!("gateway-jwks-{}.json", std::process::id()));
        std::fs::write(&path, jwks_with("old")).unwrap();
        let jwks = Jwks::new(path.to_str().unwrap()).unwrap();
        assert_eq!(jwks.load().await.unwrap(), 1);
        assert!(jwks.with_key(Some("old"), |k| k.algorithms.clone()).await.is_some());
        assert!(jwks.with_key(None, |_| ()).await.is_some(), "a single key serves tokens without kid");

        std::fs::write(&path, jwks_with("new")).unwrap();
        assert!(jwks.with_key(Some("new"), |_| ()).await.is_none(), "just loaded: no reload yet");
        jwks.state.write().unwrap().loaded = Some(Instant::now() - JWKS_MIN_RELOAD);
        assert_eq!(jwks.with_key(Some("new"), |k| k.algorithms.clone()).await, Some(vec![Algorithm::ES256]));
        std::fs::remove_file(path).unwrap();
    }
}
