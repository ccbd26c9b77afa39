//! Who is calling and what they may read. [`token`] verifies the JWT against [`keys`];
//! [`rules`] turns the caller's claims into a row scope and a column list for the table.
//! The scope joins the shape's definition, so every caller of one scope shares one log.

pub mod keys;
pub mod rules;
pub mod token;

use std::sync::Arc;
use std::time::SystemTime;

use axum::http::{HeaderMap, header};
use serde_json::Value;
use shapes::shape::{ScopeSpec, ShapeSpec};
use shapes::table::TableName;

use self::rules::{AccessRules, ClaimError, Conflict, WriteOp};
use self::token::{Claims, Verifier};

/// A request's caller.
#[derive(Clone, Debug)]
pub enum Caller {
    /// `--auth none`: no tokens, everything readable.
    Anyone,
    /// A verified token.
    Token(Arc<Claims>),
}

impl Caller {
    /// Admins read every table unscoped and may drop shapes.
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Token(c) => c.is_admin(),
        }
    }

    /// Whose outbox ledger rows a push writes: the token's `sub` (required for writes),
    /// or one fixed subject under `--auth none`.
    pub fn subject(&self) -> Result<String, AuthError> {
        match self {
            Caller::Anyone => Ok("anonymous".into()),
            Caller::Token(c) => match c.map.get("sub") {
                Some(Value::String(s)) if !s.is_empty() && !s.contains('\0') => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                _ => Err(AuthError::NoSubject),
            },
        }
    }

    /// The last instant the caller's token is honoured (`exp` plus the leeway): live
    /// streams end then and nothing is sent after it.
    pub fn valid_until(&self) -> Option<SystemTime> {
        match self {
            Caller::Anyone => None,
            Caller::Token(c) => Some(c.valid_until),
        }
    }
}

/// Why a request is refused: 401s say how to present a valid token, 403s what this token
/// may not do. Never contains the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token: send Authorization: Bearer <JWT>")]
    Missing,
    #[error("malformed token: expected a signed JWT (header.payload.signature) with an exp claim")]
    Malformed,
    #[error("the token has expired; get a fresh one")]
    Expired,
    #[error("the token is not valid yet (nbf or iat in the future; check the clocks)")]
    NotYetValid,
    #[error("the token's signature does not verify with the configured key")]
    BadSignature,
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("no access rule allows table {0}; add a [[table]] rule for it to the config file")]
    TableNotAllowed(String),
    #[error("column {column:?} of {table} is not {how} under its access rule ({how}: {allowed})")]
    ColumnNotAllowed { table: String, column: String, how: ColumnUse, allowed: String },
    #[error("{table}: {problem}")]
    Claim { table: String, problem: ClaimError },
    #[error("only admin tokens (\"gateway_admin\": true) may {0}")]
    AdminOnly(&'static str),
    #[error("{table} does not allow {op} (its access rule's write list)")]
    WriteNotAllowed { table: String, op: String },
    #[error("writes need a token with a sub claim: the outbox keeps each subject's clients apart")]
    NoSubject,
}

impl AuthError {
    /// A fixed name for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::Rejected(_) => "rejected",
            AuthError::TableNotAllowed(_) => "table_not_allowed",
            AuthError::ColumnNotAllowed { .. } => "column_not_allowed",
            AuthError::Claim { .. } => "claim",
            AuthError::AdminOnly(_) => "admin_only",
            AuthError::WriteNotAllowed { .. } => "write_not_allowed",
            AuthError::NoSubject => "no_subject",
        }
    }

    /// 401 (no valid identity) rather than 403 (identity without the right).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::Missing
                | AuthError::Malformed
                | AuthError::Expired
                | AuthError::NotYetValid
                | AuthError::BadSignature
                | AuthError::Rejected(_)
        )
    }
}

/// How a client uses the columns it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnUse {
    /// Selected, filtered on (`where`, subset `where`) or ordered by: every use that lets
    /// values or their order reach the client.
    Readable,
    /// Set by an outbox write.
    Writable,
}

impl std::fmt::Display for ColumnUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ColumnUse::Readable => "readable",
            ColumnUse::Writable => "writable",
        })
    }
}

/// The columns of a table an access rule grants for one use: every column, or a list.
#[derive(Clone, Debug, Default)]
pub struct ColumnSet {
    only: Option<Arc<[String]>>,
}

impl ColumnSet {
    pub fn all() -> ColumnSet {
        ColumnSet { only: None }
    }

    pub fn only(columns: Arc<[String]>) -> ColumnSet {
        ColumnSet { only: Some(columns) }
    }

    pub fn allows(&self, column: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|c| c == column))
    }

    /// The listed columns; `None` when every column is granted.
    pub fn listed(&self) -> Option<&[String]> {
        self.only.as_deref()
    }

    /// The one check of the columns a client names (in `columns`, a filter, an `order_by`,
    /// an outbox value) against what the rule grants for that use.
    pub fn check<'a>(
        &self,
        table: &TableName,
        how: ColumnUse,
        named: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), AuthError> {
        match named.into_iter().find(|c| !self.allows(c)) {
            None => Ok(()),
            Some(column) => Err(AuthError::ColumnNotAllowed {
                table: table.quoted(),
                column: column.to_string(),
                how,
                allowed: self.listed().unwrap_or_default().join(", "),
            }),
        }
    }
}

/// What a caller may read of one table.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Every column the client names in a read (filters, order, selection) must be one.
    pub readable: ColumnSet,
    /// The caller reads through an access rule (not an admin, not `--auth none`).
    pub ruled: bool,
}

/// What a caller may write to one table.
#[derive(Clone, Debug, Default)]
pub struct WriteAccess {
    /// The row scope with the caller's claims; written rows must stay inside it.
    pub scope: Option<ScopeSpec>,
    pub writable: ColumnSet,
    /// For the row shown on a conflict.
    pub readable: ColumnSet,
    /// `reject_stale`: the column that versions rows.
    pub version_column: Option<String>,
}

pub struct Auth {
    verifier: Option<Verifier>,
    rules: AccessRules,
}

impl Auth {
    /// `--auth none`: every caller is [`Caller::Anyone`].
    pub fn none() -> Auth {
        Auth { verifier: None, rules: AccessRules::default() }
    }

    pub fn jwt(verifier: Verifier, rules: AccessRules) -> Auth {
        Auth { verifier: Some(verifier), rules }
    }

    pub fn enabled(&self) -> bool {
        self.verifier.is_some()
    }

    pub fn verifier(&self) -> Option<&Verifier> {
        self.verifier.as_ref()
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let Some(verifier) = &self.verifier else { return Ok(Caller::Anyone) };
        let value = headers.get(header::AUTHORIZATION).ok_or(AuthError::Missing)?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Malformed)?;
        Ok(Caller::Token(verifier.verify(token).await?))
    }

    /// What `caller` may write to `table` with `op`, which `needs` these kinds of write.
    /// `--auth none` writes anything; every token, admins included, needs a rule that lists
    /// them (admins write unscoped).
    pub fn write_access(
        &self,
        caller: &Caller,
        table: &TableName,
        op: &str,
        needs: &[WriteOp],
    ) -> Result<WriteAccess, AuthError> {
        let Caller::Token(claims) = caller else { return Ok(WriteAccess::default()) };
        let rule = self.rules.get(table).ok_or_else(|| AuthError::TableNotAllowed(table.quoted()))?;
        if !needs.iter().all(|w| rule.write.contains(w)) {
            return Err(AuthError::WriteNotAllowed { table: table.quoted(), op: op.to_string() });
        }
        let version_column = (rule.conflict == Conflict::RejectStale).then(|| rule.version_column.clone()).flatten();
        let mut access =
            WriteAccess { scope: None, writable: rule.columns.clone(), readable: rule.columns.clone(), version_column };
        if !claims.is_admin()
            && let Some(scope) = &rule.scope
        {
            access.scope =
                Some(scope.bind(&claims.map).map_err(|problem| AuthError::Claim { table: table.quoted(), problem })?);
        }
        Ok(access)
    }

    /// Narrows a shape request to what the caller may read: the table's scope with the
    /// caller's claims, and its readable columns (the default when none are asked for).
    pub fn scope(&self, caller: &Caller, table: &TableName, spec: &mut ShapeSpec) -> Result<Access, AuthError> {
        let Caller::Token(claims) = caller else { return Ok(Access::default()) };
        if claims.is_admin() {
            return Ok(Access::default());
        }
        let rule = self.rules.get(table).ok_or_else(|| AuthError::TableNotAllowed(table.quoted()))?;
        let readable = rule.columns.clone();
        match &spec.columns {
            Some(asked) => readable.check(table, ColumnUse::Readable, asked.iter().map(String::as_str))?,
            None => spec.columns = readable.listed().map(<[String]>::to_vec),
        }
        if let Some(scope) = &rule.scope {
            let bound =
                scope.bind(&claims.map).map_err(|problem| AuthError::Claim { table: table.quoted(), problem })?;
            spec.scope = Some(bound);
        }
        Ok(Access { readable, ruled: true })
    }
}
