//! Who is calling and what they may read. [`token`] verifies the JWT against [`keys`];
//! [`rules`] turns the caller's claims into a row scope and a column list for the table.
//! The scope joins the shape's definition, so every caller of one scope shares one log.

pub mod keys;
pub mod rules;
pub mod token;

use std::sync::Arc;
use std::time::SystemTime;

use axum::http::{HeaderMap, header};
use shapes::shape::{ScopeSpec, ShapeSpec};
use shapes::table::TableName;

use self::rules::{AccessRules, ClaimError, Conflict, WriteOp};
use self::token::{Claims, Verifier};
use crate::outbox::Op;

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

    /// When the caller's token stops being valid (live streams end then).
    pub fn expires(&self) -> Option<SystemTime> {
        match self {
            Caller::Anyone => None,
            Caller::Token(c) => Some(c.expires),
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
    #[error("column {column:?} of {table} is not readable under its access rule (readable: {readable})")]
    ColumnNotAllowed { table: String, column: String, readable: String },
    #[error("{table}: {problem}")]
    Claim { table: String, problem: ClaimError },
    #[error("only admin tokens (\"gateway_admin\": true) may {0}")]
    AdminOnly(&'static str),
    #[error("{table} does not allow {op} (its access rule's write list)")]
    WriteNotAllowed { table: String, op: String },
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

/// What a caller may read of one table.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Readable columns; `None` is all. The client's `where` may read only these.
    pub readable: Option<Arc<[String]>>,
}

/// What a caller may write to one table.
#[derive(Clone, Debug, Default)]
pub struct WriteAccess {
    /// The row scope with the caller's claims; written rows must stay inside it.
    pub scope: Option<ScopeSpec>,
    /// Writable columns; `None` is all.
    pub writable: Option<Arc<[String]>>,
    /// Readable columns (for the row shown on a conflict); `None` is all.
    pub readable: Option<Arc<[String]>>,
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

    /// What `caller` may write to `table` with `op`. `--auth none` writes anything; every
    /// token, admins included, needs a rule that lists the op (admins write unscoped).
    pub fn write_access(&self, caller: &Caller, table: &TableName, op: Op) -> Result<WriteAccess, AuthError> {
        let Caller::Token(claims) = caller else { return Ok(WriteAccess::default()) };
        let rule = self.rules.get(table).ok_or_else(|| AuthError::TableNotAllowed(table.quoted()))?;
        let needs: &[WriteOp] = match op {
            Op::Insert => &[WriteOp::Insert],
            Op::Update => &[WriteOp::Update],
            Op::Delete => &[WriteOp::Delete],
            Op::Upsert => &[WriteOp::Insert, WriteOp::Update],
        };
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
        if let Some(allowed) = &rule.columns {
            match &spec.columns {
                Some(asked) => {
                    if let Some(c) = asked.iter().find(|c| !allowed.contains(c)) {
                        return Err(AuthError::ColumnNotAllowed {
                            table: table.quoted(),
                            column: c.clone(),
                            readable: allowed.join(", "),
                        });
                    }
                }
                None => spec.columns = Some(allowed.to_vec()),
            }
        }
        if let Some(scope) = &rule.scope {
            let bound =
                scope.bind(&claims.map).map_err(|problem| AuthError::Claim { table: table.quoted(), problem })?;
            spec.scope = Some(bound);
        }
        Ok(Access { readable: rule.columns.clone() })
    }
}
