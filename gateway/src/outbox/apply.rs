//! Applying a batch: one transaction, which first locks the client's ledger row; all writes
//! in one pipelined round, and when one is refused, the batch again with each mutation in a
//! savepoint, so a refused one leaves the others; the ledger row written in the same
//! transaction; the whole batch retried a few times on serialization failures and
//! deadlocks, then refused with 503. Nothing is ever half-applied: a batch commits whole or
//! not at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Pool};
use shapes::table::TableName;
use shapes::where_clause::{BindOptions, WhereError, parse_where_with_tables};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::plan::{self, Statement};
use super::session::BatchTx;
use super::{Batch, BatchResult, Mutation, MutationResult, Op, Status, Tables, WriteTable, ledger};
use crate::auth::{Auth, Caller};

/// Most tables a scope's subqueries may read.
const MAX_SCOPE_TABLES: usize = 8;

/// Tables resolved for a batch, by name and op: the target or why it may not be written,
/// and whether its columns were read again from the catalog.
type Targets<'m> = HashMap<(&'m str, Op), (Result<Arc<plan::Target>, String>, bool)>;

/// Attempts of a batch that hit a serialization failure or deadlock.
const ATTEMPTS: u32 = 4;

/// Who pushes a batch: what they may write, and the subject their ledger rows are kept under.
struct Pusher<'a> {
    auth: &'a Auth,
    caller: &'a Caller,
    subject: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(
        "mutation {got} does not follow the last one applied for this client: the next id must be {expected}; push the pending mutations numbered from {expected}"
    )]
    OutOfOrder { expected: u64, got: u64 },
    #[error("the database is busy with conflicting writes; retry the batch (it is idempotent)")]
    Contended,
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    NotSetUp(String),
}

/// The outbox's database side: a connection pool and the writable tables' columns.
pub struct Outbox {
    pub pool: Pool,
    pub tables: Tables,
    pub bind: BindOptions,
}

impl Outbox {
    /// Applies `batch` for `caller`, whose ledger rows are kept under `subject`.
    pub async fn push(
        &self,
        auth: &Auth,
        caller: &Caller,
        subject: &str,
        batch: &Batch<'_>,
    ) -> Result<BatchResult, PushError> {
        let who = Pusher { auth, caller, subject };
        let session = self.session().await.map_err(failed)?;
        let plans = self.plan_all(&session, &who, batch).await.map_err(failed)?;
        if let Some(result) = self.in_one_statement(&session, &who, batch, &plans).await {
            return Ok(result);
        }
        drop(session);
        // Then in a transaction, optimistic first: all writes in one pipelined round. When
        // one fails, the batch runs again, one mutation at a time, each in its own savepoint.
        let mut mode = Mode::Fast;
        let mut attempt = 0;
        loop {
            match self.attempt(&who, batch, &plans, mode).await {
                Ok(result) => return Ok(result),
                Err(Attempt::OneByOne) => mode = Mode::OneByOne,
                Err(Attempt::Retry) if attempt + 1 < ATTEMPTS => {
                    let jitter = rand::random_range(0..20u64);
                    tokio::time::sleep(Duration::from_millis(10 * 2u64.pow(attempt) + jitter)).await;
                    attempt += 1;
                }
                Err(Attempt::Retry) => return Err(PushError::Contended),
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
    }

    /// A pooled session, its prepared statements bounded.
    async fn session(&self) -> Result<deadpool_postgres::Object, Attempt> {
        let session = self.pool.get().await.map_err(|e| Attempt::Failed(PushError::Unavailable(e.to_string())))?;
        if session.statement_cache.size() > STATEMENTS_PER_SESSION {
            session.statement_cache.clear();
        }
        Ok(session)
    }

    /// Every mutation checked against the rules and its table: its write or its refusal.
    async fn plan_all(
        &self,
        session: &ClientWrapper,
        who: &Pusher<'_>,
        batch: &Batch<'_>,
    ) -> Result<Vec<Result<plan::Write, MutationResult>>, Attempt> {
        let mut targets = HashMap::new();
        let mut plans = Vec::with_capacity(batch.mutations.len());
        for m in &batch.mutations {
            plans.push(self.plan(session, who, &mut targets, m).await?);
        }
        Ok(plans)
    }

    /// The common batch, new inserts into one table, as one statement with the ledger's
    /// claim on its ids ([`ledger::claiming`]): one round trip instead of a transaction's
    /// three. `None` when the batch does not qualify or the statement did not apply it whole
    /// (its ids are not the next ones, a row is refused or outside the scope); the
    /// transaction then decides each mutation.
    async fn in_one_statement(
        &self,
        session: &ClientWrapper,
        who: &Pusher<'_>,
        batch: &Batch<'_>,
        plans: &[Result<plan::Write, MutationResult>],
    ) -> Option<BatchResult> {
        let writes: Vec<&plan::Write> = plans.iter().map(|p| p.as_ref().ok()).collect::<Option<_>>()?;
        let first = writes.first()?;
        if !writes.iter().all(|w| plan::same_insert(first, w)) {
            return None;
        }
        let insert = plan::insert_many(&writes, plan::Rows::RequireScope { when: ledger::CLAIMED });
        let ids = (batch.mutations.first()?.id, batch.mutations.last()?.id);
        let statement = ledger::claiming(insert, who.subject, &batch.client_id, ids);
        let txid: i64 = match run(session, &statement).await {
            Ok(rows) => rows.first()?.get::<_, Option<i64>>(0)?,
            Err(e) => {
                tracing::debug!(error = %crate::db::DbError::from(e), "a batch's one statement failed; applying it in a transaction");
                return None;
            }
        };
        let results: Vec<MutationResult> =
            batch.mutations.iter().map(|m| MutationResult::new(m.id, Status::Applied)).collect();
        self.count(&batch.mutations, &results);
        Some(BatchResult { txid: Some(txid.to_string()), results })
    }

    async fn table(&self, tx: &ClientWrapper, name: &TableName) -> Result<Option<Arc<WriteTable>>, Attempt> {
        self.tables.get(&**tx, name).await.map_err(|e| Attempt::Failed(PushError::Unavailable(e.to_string())))
    }

    async fn attempt(
        &self,
        who: &Pusher<'_>,
        batch: &Batch<'_>,
        plans: &[Result<plan::Write, MutationResult>],
        mode: Mode,
    ) -> Result<BatchResult, Attempt> {
        let tx = BatchTx::new(self.session().await?);
        // The ledger row stays locked until commit.
        let first_id = batch.mutations.first().map_or(0, |m| m.id);
        let (ledger, txid) = tx.begin_with(ledger::open(&tx, who.subject, &batch.client_id, first_id)).await?;
        // Ids up to the last applied one are duplicates; the rest must continue from it.
        let fresh_from = batch.mutations.iter().position(|m| m.id > ledger.last_id).unwrap_or(batch.mutations.len());
        if let Some(first) = batch.mutations.get(fresh_from)
            && first.id != ledger.last_id + 1
        {
            return Err(Attempt::Failed(PushError::OutOfOrder { expected: ledger.last_id + 1, got: first.id }));
        }
        let mut results: Vec<Option<MutationResult>> = vec![None; batch.mutations.len()];
        for (i, m) in batch.mutations[..fresh_from].iter().enumerate() {
            let first = ledger.first_result(m.id).map(Box::new);
            results[i] = Some(MutationResult { first, ..MutationResult::new(m.id, Status::Duplicate) });
        }
        let mut writes: Vec<(usize, &plan::Write)> = Vec::new();
        for (i, p) in plans.iter().enumerate().skip(fresh_from) {
            match p {
                Ok(w) => writes.push((i, w)),
                Err(refused) => results[i] = Some(refused.clone()),
            }
        }
        if fresh_from == batch.mutations.len() {
            tx.rollback().await?;
            let results = results.into_iter().flatten().collect();
            return Ok(BatchResult { txid: None, results });
        }
        if batch.atomic {
            // An aborted batch still consumes its ids: its writes go, its results stay.
            tx.batch_execute("savepoint batch").await?;
        }
        let ids = (batch.mutations[fresh_from].id, batch.mutations.last().map_or(ledger.last_id, |m| m.id));
        // Inserts in the fast round either all apply or the round is rolled back, so their
        // results are known beforehand and the ledger is written in the same round.
        let foreseen: Option<Vec<MutationResult>> = (matches!(mode, Mode::Fast)
            && writes.iter().all(|(_, w)| w.op == Op::Insert)
            && !(batch.atomic && results.iter().flatten().any(|r| r.fails())))
        .then(|| {
            results[fresh_from..]
                .iter()
                .zip(&batch.mutations[fresh_from..])
                .map(|(r, m)| r.clone().unwrap_or_else(|| MutationResult::new(m.id, Status::Applied)))
                .collect()
        });
        let outcomes = match mode {
            Mode::Fast => {
                let record = async {
                    match &foreseen {
                        Some(r) => ledger::record(&tx, who.subject, &batch.client_id, ids, Some(txid), r).await,
                        None => Ok(()),
                    }
                };
                let (outcomes, recorded) =
                    futures::future::join(self.fast(&tx, &batch.mutations, &writes), record).await;
                match outcomes? {
                    Some(outcomes) => {
                        recorded?;
                        outcomes
                    }
                    None => {
                        tx.rollback().await?;
                        return Err(Attempt::OneByOne);
                    }
                }
            }
            Mode::OneByOne => {
                let mut outcomes = Vec::with_capacity(writes.len());
                for (i, w) in &writes {
                    outcomes.push((*i, self.careful(&tx, batch.mutations[*i].id, w).await?));
                }
                outcomes
            }
        };
        for (i, r) in outcomes {
            results[i] = Some(r);
        }
        let mut results: Vec<MutationResult> =
            results.into_iter().map(|r| r.expect("every mutation has a result")).collect();
        self.count(&batch.mutations, &results);
        let mut committed = Some(txid);
        if batch.atomic
            && let Some(culprit) = results[fresh_from..].iter().find(|r| r.fails())
        {
            let why = format!("the batch is atomic and mutation {} was refused", culprit.id);
            tx.batch_execute("rollback to savepoint batch").await?;
            for r in &mut results[fresh_from..] {
                if !r.fails() {
                    *r = MutationResult::refused(r.id, Status::Aborted, why.clone());
                }
            }
            committed = None;
        }
        match &foreseen {
            Some(recorded) => debug_assert_eq!(recorded[..], results[fresh_from..]),
            None => ledger::record(&tx, who.subject, &batch.client_id, ids, committed, &results[fresh_from..]).await?,
        }
        tx.commit().await?;
        Ok(BatchResult { txid: committed.map(|t| t.to_string()), results })
    }

    /// Counts results by table and status. A table name the catalog does not know counts
    /// as `unknown`, so clients cannot grow the label set.
    fn count(&self, mutations: &[Mutation<'_>], results: &[MutationResult]) {
        let mut counts: HashMap<(&str, Status), u64> = HashMap::new();
        for (m, r) in mutations.iter().zip(results) {
            *counts.entry((m.table.as_ref(), r.status)).or_default() += 1;
        }
        for ((table, status), n) in counts {
            let table = match TableName::parse(table) {
                Ok(name) if self.tables.contains(&name) => name.to_string(),
                _ => "unknown".to_string(),
            };
            metrics::counter!("gateway_outbox_mutations_total", "table" => table, "status" => status_name(status))
                .increment(n);
        }
    }

    /// Checks a mutation against the rules and the table; `Ok(Err(_))` is its refusal.
    /// Tables are resolved once per batch (`targets`), as most batches write one or two.
    async fn plan<'m>(
        &self,
        tx: &ClientWrapper,
        who: &Pusher<'_>,
        targets: &mut Targets<'m>,
        m: &'m Mutation<'_>,
    ) -> Result<Result<plan::Write, MutationResult>, Attempt> {
        let refuse = |msg: String| Ok(Err(MutationResult::refused(m.id, Status::Rejected, msg)));
        let Some(op) = Op::parse(&m.op) else {
            return refuse(format!("unknown op {:?}; use insert, update, upsert or delete", m.op));
        };
        let key = (m.table.as_ref(), op);
        let (mut target, mut refreshed) = match targets.get(&key) {
            Some(known) => known.clone(),
            None => (self.target(tx, who, &m.table, op).await?, false),
        };
        // A column the cached definition lacks may be new: read the catalog again, once
        // per table and batch.
        if !refreshed
            && let Ok(t) = &target
            && m.value.iter().flat_map(|v| v.keys()).any(|k| t.table.schema.column_index(k).is_none())
        {
            self.tables.forget(&t.table.schema.name);
            target = self.target(tx, who, &m.table, op).await?;
            refreshed = true;
        }
        targets.insert(key, (target.clone(), refreshed));
        match target
            .and_then(|t| plan::check(&t, op, m.key.as_ref(), m.value.as_ref(), m.base.as_ref()).map_err(|r| r.0))
        {
            Ok(w) => Ok(Ok(w)),
            Err(msg) => refuse(msg),
        }
    }

    /// A table as the caller may write it with `op`; `Ok(Err(_))` says why it may not.
    async fn target(
        &self,
        tx: &ClientWrapper,
        who: &Pusher<'_>,
        table: &str,
        op: Op,
    ) -> Result<Result<Arc<plan::Target>, String>, Attempt> {
        let name = match TableName::parse(table) {
            Ok(n) => n,
            Err(e) => return Ok(Err(format!("table: {e}"))),
        };
        let access = match who.auth.write_access(who.caller, &name, op.as_str(), super::needs(op)) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let Some(table) = self.table(tx, &name).await? else {
            return Ok(Err(format!("table {} does not exist", name.quoted())));
        };
        let scope = match &access.scope {
            None => None,
            Some(s) => {
                let params = s.params.iter().cloned().collect();
                // A scope through a subquery reads other tables: PostgreSQL runs it in the
                // write's statement, against the rows as the write sees them.
                let mut catalog = Vec::new();
                loop {
                    match parse_where_with_tables(&s.where_text, &table.schema, &catalog, &params, self.bind) {
                        Ok(expr) => {
                            break Some(plan::ScopeSql { row: expr.to_sql(), existing: expr.to_sql_on(plan::TARGET) });
                        }
                        Err(WhereError::UnknownTable(inner)) if catalog.len() < MAX_SCOPE_TABLES => {
                            match self.table(tx, &inner).await? {
                                Some(t) => catalog.push(t.schema.clone()),
                                None => {
                                    return Ok(Err(format!(
                                        "the access rule's scope reads {}, which does not exist",
                                        inner.quoted()
                                    )));
                                }
                            }
                        }
                        Err(e) => return Ok(Err(format!("the token's claims do not fit the access rule: {e}"))),
                    }
                }
            }
        };
        Ok(Ok(Arc::new(plan::Target {
            table,
            scope,
            writable: access.writable,
            readable: access.readable,
            version_column: access.version_column,
        })))
    }

    /// Every write at once, pipelined, inserts of one shape merged into one statement.
    /// `None` when a write failed or left its scope: the transaction is then rolled back
    /// and the batch applied one mutation at a time. (No savepoint here: a subtransaction
    /// costs PostgreSQL about a quarter of a plain batch's work, and refusals are rare.)
    async fn fast(
        &self,
        tx: &ClientWrapper,
        mutations: &[Mutation<'_>],
        writes: &[(usize, &plan::Write)],
    ) -> Result<Option<Vec<(usize, MutationResult)>>, Attempt> {
        // Runs of inserts that fit one statement, and everything else alone.
        let mut groups: Vec<&[(usize, &plan::Write)]> = Vec::new();
        let mut start = 0;
        for end in 1..=writes.len() {
            if end == writes.len() || !plan::same_insert(writes[start].1, writes[end].1) {
                groups.push(&writes[start..end]);
                start = end;
            }
        }
        let statements: Vec<Statement> = groups
            .iter()
            .map(|g| {
                if g.len() > 1 {
                    plan::insert_many(&g.iter().map(|(_, w)| *w).collect::<Vec<_>>(), plan::Rows::ReportScope)
                } else {
                    g[0].1.statement()
                }
            })
            .collect();
        let answers = futures::future::join_all(statements.iter().map(|s| run(tx, s))).await;
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut unmatched = Vec::new();
        for (group, answer) in groups.iter().zip(answers) {
            let rows = match answer {
                Ok(rows) => rows,
                Err(e) if retryable(&e) => return Err(e.into()),
                Err(_) => return Ok(None),
            };
            let in_scope: Vec<bool> = rows.iter().map(|r| r.get(0)).collect();
            if in_scope.iter().any(|ok| !ok) {
                return Ok(None);
            }
            match (group.len(), in_scope.len()) {
                (n, m) if n == m => outcomes
                    .extend(group.iter().map(|(i, _)| (*i, MutationResult::new(mutations[*i].id, Status::Applied)))),
                (1, 0) => unmatched.push(&group[0]),
                _ => return Ok(None),
            }
        }
        // Writes that matched nothing changed nothing: only their status needs the row.
        let lookups: Vec<Statement> = unmatched.iter().map(|(_, w)| w.current_row()).collect();
        let current = futures::future::join_all(lookups.iter().map(|s| run(tx, s))).await;
        for ((i, w), rows) in unmatched.into_iter().zip(current) {
            outcomes.push((*i, unmatched_result(mutations[*i].id, w, &rows?)));
        }
        Ok(Some(outcomes))
    }

    /// One write inside its own savepoint, so a failure leaves the others.
    async fn careful(&self, tx: &ClientWrapper, id: u64, w: &plan::Write) -> Result<MutationResult, Attempt> {
        tx.batch_execute("savepoint mutation").await?;
        let written = match run(tx, &w.statement()).await {
            Ok(rows) => rows,
            Err(e) if retryable(&e) => return Err(e.into()),
            Err(e) => {
                tx.batch_execute("rollback to savepoint mutation").await?;
                if e.code() == Some(&SqlState::UNDEFINED_COLUMN) || e.code() == Some(&SqlState::UNDEFINED_TABLE) {
                    self.tables.forget(&w.target.table.schema.name);
                }
                let reason = crate::db::client_reason(&e, |c| w.target.writable.allows(c));
                return Ok(MutationResult::refused(id, Status::Rejected, reason));
            }
        };
        let result = match written.first().map(|r| r.get::<_, bool>(0)) {
            Some(true) => MutationResult::new(id, Status::Applied),
            Some(false) => {
                tx.batch_execute("rollback to savepoint mutation").await?;
                return Ok(MutationResult::refused(
                    id,
                    Status::Rejected,
                    format!("the {} would leave the row outside your scope", w.op),
                ));
            }
            None => unmatched_result(id, w, &run(tx, &w.current_row()).await?),
        };
        tx.batch_execute("release savepoint mutation").await?;
        Ok(result)
    }
}

/// The result of a write that matched no row, from the row now at its key: missing,
/// outside the caller's scope, or changed since the client's base version.
fn unmatched_result(id: u64, w: &plan::Write, current: &[tokio_postgres::Row]) -> MutationResult {
    match current.first().map(|r| (r.get::<_, bool>(0), r.get::<_, serde_json::Value>(1))) {
        // A row outside the caller's scope answers as a missing one would, so keys of other
        // scopes cannot be probed; only an upsert, which would create a missing row, says
        // that the key is taken, as an insert's unique violation does.
        None | Some((false, _)) if w.op == Op::Delete => MutationResult::new(id, Status::Applied),
        Some((false, _)) if w.op == Op::Upsert => {
            MutationResult::refused(id, Status::Rejected, "the key is already taken by a row you may not write")
        }
        None | Some((false, _)) => {
            MutationResult { row: Some(serde_json::Value::Null), ..MutationResult::new(id, Status::Conflict) }
        }
        Some((true, row)) => MutationResult {
            error: Some(match (w.target.version_column.as_deref().unwrap_or("version"), &w.base_version) {
                (vc, None) => format!("a row with this key exists; send base.{vc} to change it"),
                (vc, Some(_)) => format!("the row changed since base.{vc}"),
            }),
            row: Some(row),
            ..MutationResult::new(id, Status::Conflict)
        },
    }
}

/// Runs a statement, prepared once per session: an unprepared one costs a second round
/// trip and a fresh parse and plan every time. Scopes put their claim values in the text,
/// so each session's cache is bounded ([`STATEMENTS_PER_SESSION`]).
async fn run(tx: &ClientWrapper, s: &Statement) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let params: Vec<&(dyn ToSql + Sync)> = s.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let statement = tx.prepare_cached(&s.sql).await?;
    tx.query(&statement, &params).await
}

/// Prepared statements a pooled session keeps before its cache is emptied.
const STATEMENTS_PER_SESSION: usize = 512;

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Applied => "applied",
        Status::Duplicate => "duplicate",
        Status::Conflict => "conflict",
        Status::Rejected => "rejected",
        Status::Aborted => "aborted",
    }
}

/// The error of a step that can only fail (not retry or fall back).
fn failed(a: Attempt) -> PushError {
    match a {
        Attempt::Failed(e) => e,
        Attempt::OneByOne | Attempt::Retry => PushError::Unavailable("the database session failed".into()),
    }
}

/// Conflicts between concurrent transactions: the batch is retried whole.
fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

/// How an attempt applies its writes.
#[derive(Clone, Copy)]
enum Mode {
    /// All at once, pipelined.
    Fast,
    /// Each in its own savepoint, so a refused one leaves the others.
    OneByOne,
}

/// Why an attempt at a batch ended without a result.
enum Attempt {
    /// A write was refused or failed in the fast round: apply one by one.
    OneByOne,
    Retry,
    Failed(PushError),
}

impl From<tokio_postgres::Error> for Attempt {
    /// Errors outside a mutation's own statement (the ledger, savepoints, commit): the
    /// client learns the SQLSTATE, the log gets PostgreSQL's text.
    fn from(e: tokio_postgres::Error) -> Self {
        if retryable(&e) {
            Attempt::Retry
        } else if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
            Attempt::Failed(PushError::NotSetUp(
                "the outbox ledger gateway.clients is missing; run sql/setup.sql (or give the gateway's role CREATE on the database)".into(),
            ))
        } else {
            let message = match e.code() {
                Some(code) => {
                    format!("the database refused the batch (SQLSTATE {}; the gateway log has more)", code.code())
                }
                None => "the database session failed".into(),
            };
            tracing::warn!(error = %crate::db::DbError::from(e), "outbox batch failed outside its mutations");
            Attempt::Failed(PushError::Unavailable(message))
        }
    }
}
