//! Whose local data a database holds: the gateway's URL and the token's subject (`sub`).
//! Rows, positions, the outbox and the client id belong to one identity. Another identity
//! gets its own database by default, is refused a database stamped with someone else, and
//! a token of someone else is never sent with this identity's writes.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The gateway's base URL, without a trailing slash.
    pub url: String,
    /// The token's `sub`: none without tokens (`--auth none`) or without that claim.
    pub subject: Option<String>,
}

impl Identity {
    pub fn new(url: &str, subject: Option<String>) -> Identity {
        Identity { url: url.trim_end_matches('/').to_string(), subject }
    }

    /// The database this identity's data lives in unless the app names one.
    pub fn default_database(&self) -> String {
        match &self.subject {
            None => format!("gateway-sync {}", self.url),
            Some(subject) => format!("gateway-sync {} as {subject}", self.url),
        }
    }

    /// Why `database`, stamped with `owner`, may not be opened as this identity; `None`
    /// when it is this identity's.
    pub fn refusal(&self, database: &str, owner: &Identity) -> Option<String> {
        (owner != self).then(|| {
            format!(
                "openSync: the local database {database:?} holds the data of {}, not of {}: open it with that \
                 identity's token, call signOut({{ clear: true }}) from it, or leave `database` unset so \
                 each identity gets its own",
                owner.describe(),
                self.describe()
            )
        })
    }

    /// Why a token for `subject` may not be used with this identity's data; `None` when it may.
    pub fn foreign_token(&self, subject: Option<&str>) -> Option<String> {
        (subject != self.subject.as_deref()).then(|| {
            format!(
                "getToken returned a token for {} while this database holds the data of {}: nothing is sent \
                 with it; sign out and open the other identity's database with openSync",
                Identity::new(&self.url, subject.map(str::to_string)).describe(),
                self.describe()
            )
        })
    }

    fn describe(&self) -> String {
        match &self.subject {
            Some(subject) => format!("subject {subject:?} at {}", self.url),
            None => format!("no subject (no token, or none with `sub`) at {}", self.url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Identity;

    fn of(subject: Option<&str>) -> Identity {
        Identity::new("https://sync.example/", subject.map(str::to_string))
    }

    #[test]
    fn each_identity_has_its_own_default_database() {
        assert_eq!(of(None).default_database(), "gateway-sync https://sync.example");
        assert_eq!(of(Some("x")).default_database(), "gateway-sync https://sync.example as x");
        assert_ne!(of(Some("x")).default_database(), of(Some("y")).default_database());
    }

    #[test]
    fn a_database_opens_only_as_its_owner() {
        assert_eq!(of(Some("x")).refusal("db", &of(Some("x"))), None);
        let refused = of(Some("y")).refusal("db", &of(Some("x"))).unwrap();
        assert!(refused.contains("subject \"x\"") && refused.contains("signOut"), "{refused}");
        assert!(of(None).refusal("db", &of(Some("x"))).is_some());
        let elsewhere = Identity::new("https://other.example", Some("x".into()));
        assert!(
            of(Some("x")).refusal("db", &elsewhere).is_some(),
            "the same subject at another gateway is another identity"
        );
    }

    #[test]
    fn only_the_owners_tokens_are_used() {
        assert_eq!(of(Some("x")).foreign_token(Some("x")), None);
        assert!(of(Some("x")).foreign_token(Some("y")).unwrap().contains("subject \"y\""));
        assert!(of(Some("x")).foreign_token(None).is_some());
        assert_eq!(of(None).foreign_token(None), None);
    }
}
