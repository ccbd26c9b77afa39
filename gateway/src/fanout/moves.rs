//! Rows moving into and out of a shape when a subquery's set changes (docs/subqueries.md).
//!
//! When values enter or leave a set at transaction T, the shape's changes from T on are held
//! and a query reads, at a snapshot S, the rows whose membership differs between the set
//! before T (the "before" view) and after it. When the stream reaches a marker written
//! after that query, every transaction S contains has arrived, and the hold is spliced:
//! first the held transactions S contains, planned with the set as it was (the client then
//! holds the shape as of S without the change), then the query's rows (inserts for rows
//! that came in, deletes for rows that went), then the held transactions S does not
//! contain, planned with the set as it is. One row's transactions are ordered by its
//! locks, so those S contains come before those it does not: each row ends right.

use shapes::change::{Cell, Change, Txn};
use shapes::contract::Operation;
use shapes::offset::Lsn;
use shapes::set_registry::SetId;
use shapes::subquery_set::{SetDelta, SetLookup, SubquerySet};
use shapes::where_clause::{EvalError, SetKey, SetView, Subquery};

use shapes::shape::{Replica, Shape};
use shapes::wire::MessageEncoder;

use super::plan::{Planned, plan};
use super::snapshot_info::SnapshotInfo;

/// A shape's changes held while a move query runs.
#[derive(Debug)]
pub struct Hold {
    /// The move under way; a further change to a set starts another, which replaces it.
    pub id: u64,
    /// Each set that changed since the hold began, and how.
    pub sets: Vec<SetMove>,
    /// The transaction that changed a set first: the moved rows are sent as its.
    pub trigger_xid: u32,
    /// Every transaction that changed a set since the hold began: the move query must see
    /// them all (the stream sends a commit a moment before PostgreSQL shows it to new
    /// snapshots).
    pub set_xids: Vec<u32>,
    pub txns: Vec<HeldTxn>,
    /// How many changes `txns` hold.
    held: usize,
    pub result: Option<MoveResult>,
}

/// What one transaction did to one of a shape's sets: `delta`, leaving it `now`.
pub struct SetChange<'a> {
    pub set: SetId,
    pub subquery: &'a Subquery,
    pub delta: &'a SetDelta,
    pub now: &'a SubquerySet,
}

/// One set's part in a move.
#[derive(Debug)]
pub struct SetMove {
    pub set: SetId,
    pub subquery: Subquery,
    /// Whether each value changed since the hold began was in the set before it began.
    before: Vec<(SetKey, bool)>,
    /// The values in the set now that were not before the hold, and those gone since.
    pub entered: Vec<SetKey>,
    pub left: Vec<SetKey>,
    /// A restarted shape waiting for this set to load: the values its log reflects, to
    /// compare with the loaded set (no move query runs until every such set is loaded).
    pub resync_view: Option<Vec<SetKey>>,
}

impl SetMove {
    fn new(set: SetId, subquery: Subquery) -> SetMove {
        SetMove { set, subquery, before: Vec::new(), entered: Vec::new(), left: Vec::new(), resync_view: None }
    }

    fn merge(&mut self, delta: &SetDelta, now: &SubquerySet) {
        for (values, was_in) in [(&delta.entered, false), (&delta.left, true)] {
            for v in values {
                if !self.before.iter().any(|(k, _)| k == v) {
                    self.before.push((v.clone(), was_in));
                }
            }
        }
        let now_in = |v: &SetKey| now.holds(v);
        self.entered = self.before.iter().filter(|(v, was)| !was && now_in(v)).map(|(v, _)| v.clone()).collect();
        self.left = self.before.iter().filter(|(v, was)| *was && !now_in(v)).map(|(v, _)| v.clone()).collect();
    }

    /// The set as the shape saw it before the hold.
    fn view(&self) -> SetView<'_> {
        SetView { subquery: &self.subquery, without: &self.entered, with: &self.left }
    }
}

impl Hold {
    /// A hold with no change yet, as move `id`.
    fn empty(id: u64, trigger_xid: u32) -> Hold {
        Hold { id, sets: Vec::new(), trigger_xid, set_xids: Vec::new(), txns: Vec::new(), held: 0, result: None }
    }

    /// A hold that starts with `change`, made by transaction `trigger_xid`, as move `id`.
    pub fn new(id: u64, trigger_xid: u32, change: &SetChange) -> Hold {
        let mut hold = Hold::empty(id, trigger_xid);
        hold.merge(id, trigger_xid, change);
        hold
    }

    /// The hold of a restarted shape whose log reflects `views` of its sets: its changes
    /// wait until every one is loaded, then move the differences ([`Hold::merge`]).
    pub fn resync(views: Vec<(SetId, Subquery, Vec<SetKey>)>) -> Hold {
        let mut hold = Hold::empty(0, 0);
        for (set, subquery, view) in views {
            // A subquery tested twice in one filter is one set.
            if !hold.sets.iter().any(|m| m.set == set) {
                hold.sets.push(SetMove { resync_view: Some(view), ..SetMove::new(set, subquery) });
            }
        }
        hold
    }

    /// Another change to a set while held: one move, `id`, now covers every change since
    /// the hold began, comparing each set before it with the set now (an earlier move's
    /// result is dropped).
    pub fn merge(&mut self, id: u64, xid: u32, change: &SetChange) {
        if xid != 0 && !self.set_xids.contains(&xid) {
            self.set_xids.push(xid);
        }
        if self.trigger_xid == 0 {
            self.trigger_xid = xid;
        }
        let at = match self.sets.iter().position(|m| m.set == change.set) {
            Some(at) => at,
            None => {
                self.sets.push(SetMove::new(change.set, change.subquery.clone()));
                self.sets.len() - 1
            }
        };
        self.sets[at].merge(change.delta, change.now);
        self.id = id;
        self.result = None;
    }

    /// Waits for `set` to load again (a set its filter reads changed in `xid`) before any
    /// move query runs; `values` are the set's before the reload. The query under way, if
    /// any, is superseded: the move is now `id`.
    pub fn await_set(&mut self, id: u64, xid: u32, set: SetId, subquery: &Subquery, values: Vec<SetKey>) {
        if !self.set_xids.contains(&xid) {
            self.set_xids.push(xid);
        }
        if self.trigger_xid == 0 {
            self.trigger_xid = xid;
        }
        self.id = id;
        self.result = None;
        match self.sets.iter_mut().find(|m| m.set == set) {
            // The values before the hold began: those that entered since are taken out,
            // those that left put back.
            Some(m) if m.resync_view.is_none() => {
                let before = values.into_iter().filter(|v| !m.entered.contains(v)).chain(m.left.iter().cloned());
                m.resync_view = Some(before.collect());
            }
            Some(_) => {}
            None => self.sets.push(SetMove { resync_view: Some(values), ..SetMove::new(set, subquery.clone()) }),
        }
    }

    /// Takes the view a restarted shape's log reflects of `set`, once.
    pub fn take_resync_view(&mut self, set: SetId) -> Option<Vec<SetKey>> {
        self.sets.iter_mut().find(|m| m.set == set).and_then(|m| m.resync_view.take())
    }

    /// Whether a set of a restarted shape is still loading: no move query may run yet.
    pub fn awaits_sets(&self) -> bool {
        self.sets.iter().any(|m| m.resync_view.is_some())
    }

    /// The sets as the shape saw them before the hold.
    pub fn views(&self) -> Vec<SetView<'_>> {
        self.sets.iter().map(SetMove::view).collect()
    }

    /// Values that entered and left the hold's sets.
    pub fn moved_values(&self) -> (usize, usize) {
        self.sets.iter().fold((0, 0), |(e, l), m| (e + m.entered.len(), l + m.left.len()))
    }

    /// Changes held.
    pub fn held_changes(&self) -> usize {
        self.held
    }

    /// Keeps one change of `txn` for the splice.
    pub fn push(&mut self, txn: &Txn, change: &Change) {
        self.held += 1;
        match self.txns.last_mut() {
            Some(last) if last.xid == txn.xid && last.commit_lsn == txn.commit_lsn => last.changes.push(change.clone()),
            _ => self.txns.push(HeldTxn { xid: txn.xid, commit_lsn: txn.commit_lsn, changes: vec![change.clone()] }),
        }
    }
}

/// One held transaction's changes to the shape's table.
#[derive(Debug)]
pub struct HeldTxn {
    pub xid: u32,
    pub commit_lsn: Lsn,
    pub changes: Vec<Change>,
}

/// What the move query read.
#[derive(Debug)]
pub struct MoveResult {
    pub snapshot: SnapshotInfo,
    pub rows: Vec<MovedRow>,
}

/// A row whose membership changed: in the shape now (an insert) or no longer (a delete),
/// with the values of the shape's read columns ([`read_columns`]).
#[derive(Debug)]
pub struct MovedRow {
    pub now_in: bool,
    pub values: Vec<Option<String>>,
}

/// The columns a move query reads: the selected ones and the key, in table order.
pub fn read_columns(s: &Shape) -> Vec<usize> {
    let mut read: Vec<usize> = s.selected.iter().chain(&s.key).copied().collect();
    read.sort_unstable();
    read.dedup();
    read
}

/// The sets as they are, except those a hold moves, seen as they were before it.
struct Before<'a> {
    now: &'a dyn SetLookup,
    moved: Vec<(&'a Subquery, SubquerySet)>,
}

impl SetLookup for Before<'_> {
    fn set(&self, subquery: &Subquery) -> Option<&SubquerySet> {
        match self.moved.iter().find(|(s, _)| *s == subquery) {
            Some((_, set)) => Some(set),
            None => self.now.set(subquery),
        }
    }
}

/// One group of planned messages and the transaction they are sent as, after a `move-out`
/// event for the tag values in `moved_out`.
pub struct Spliced {
    pub xid: u32,
    pub moved_out: Vec<String>,
    pub planned: Vec<Planned>,
    /// The move query's snapshot, for the moved rows' group: sent after them as
    /// `snapshot-end`, as Electric does after a move-in.
    pub query_snapshot: Option<SnapshotInfo>,
}

/// The messages that splice a finished move into the shape's log, in order (see the
/// module's documentation). `now` holds the sets as they are.
pub fn splice(
    shape: &Shape,
    encoder: &MessageEncoder,
    hold: &Hold,
    result: &MoveResult,
    now: &dyn SetLookup,
) -> Result<Vec<Spliced>, EvalError> {
    let mut before = Before { now, moved: Vec::new() };
    for m in &hold.sets {
        let current = now.set(&m.subquery).ok_or_else(|| EvalError::Value("a subquery's set is not kept".into()))?;
        let values = current.values().filter(|v| !m.entered.contains(v)).chain(&m.left).cloned();
        before.moved.push((&m.subquery, SubquerySet::from_rows(values.collect::<Vec<_>>())));
    }
    let planned_txn = |txn: &HeldTxn, sets: &dyn SetLookup| -> Result<Spliced, EvalError> {
        let mut planned = Vec::new();
        for change in &txn.changes {
            planned.extend(plan(shape, encoder, change, sets)?);
        }
        Ok(Spliced { xid: txn.xid, moved_out: Vec::new(), planned, query_snapshot: None })
    };
    let seen = |txn: &&HeldTxn| result.snapshot.contains(txn.xid);
    let mut out = Vec::new();
    for txn in hold.txns.iter().filter(seen) {
        out.push(planned_txn(txn, &before)?);
    }
    // Values that left an `IN` set the shape tags its rows by: a `move-out` of their tags.
    let tagged = shape.tag_link().and_then(|(_, tagged)| hold.sets.iter().find(|m| m.subquery == *tagged));
    let moved_out =
        tagged.map_or_else(Vec::new, |m| m.left.iter().filter_map(|v| v.first().cloned().flatten()).collect());
    out.push(Spliced {
        xid: hold.trigger_xid,
        moved_out,
        planned: moved(shape, encoder, &result.rows),
        query_snapshot: Some(result.snapshot.clone()),
    });
    for txn in hold.txns.iter().filter(|t| !seen(t)) {
        out.push(planned_txn(txn, now)?);
    }
    out.retain(|s| !s.planned.is_empty() || !s.moved_out.is_empty());
    Ok(out)
}

/// The move query's rows as inserts (with the whole row) and deletes.
fn moved(s: &Shape, encoder: &MessageEncoder, rows: &[MovedRow]) -> Vec<Planned> {
    let read = read_columns(s);
    let cell = |row: &MovedRow, col: usize| {
        let at = read.binary_search(&col).expect("read columns hold the key and the selected ones");
        row.values[at].as_deref().map(Cell::text).unwrap_or(Cell::Null)
    };
    rows.iter()
        .map(|row| {
            let key = encoder.key(s.key.iter().map(|&c| row.values[read.binary_search(&c).unwrap()].as_deref()));
            let (op, cols) = match (row.now_in, s.spec.replica) {
                (true, _) | (false, Replica::Full) => {
                    (if row.now_in { Operation::Insert } else { Operation::Delete }, &s.selected)
                }
                (false, Replica::Default) => (Operation::Delete, &s.key),
            };
            let link = s.tag_column().and_then(|c| cell(row, c).as_str().map(String::from));
            let mut planned = Planned::new(op, key, cols.iter().map(|&c| (c, cell(row, c))).collect());
            planned.link = link;
            planned.move_in = row.now_in;
            planned
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use shapes::set_registry::SetRegistry;
    use shapes::table::TableName;
    use shapes::value::SqlType;

    use super::*;

    fn key(v: &str) -> SetKey {
        vec![Some(v.to_string())]
    }

    fn set(values: &[&str]) -> SubquerySet {
        SubquerySet::from_rows(values.iter().map(|v| key(v)))
    }

    /// A set reloaded while a move of it is under way (a set its filter reads changed): the
    /// reload is compared with the set as it was before the hold, so the move covers both.
    #[test]
    fn a_reload_during_a_move_is_compared_with_the_set_before_the_hold() {
        let subquery =
            Subquery::new(TableName::new("public", "members"), vec![(1, "project_id".into(), SqlType::Int)], None);
        let id = SetRegistry::default().acquire(&subquery, 1).0;
        // Before the hold the set was {1, 2}; transaction 10 took 1 out and put 3 in.
        let delta = SetDelta { entered: vec![key("3")], left: vec![key("1")] };
        let now = set(&["2", "3"]);
        let mut hold = Hold::new(1, 10, &SetChange { set: id, subquery: &subquery, delta: &delta, now: &now });
        assert!(!hold.awaits_sets());
        // Transaction 11 changed a set its filter reads: the set reloads; the query of
        // move 1 is superseded by move 2, which waits for the reload.
        hold.await_set(2, 11, id, &subquery, now.values().cloned().collect());
        assert!(hold.awaits_sets() && hold.id == 2 && hold.set_xids == [10, 11]);
        let mut before = hold.take_resync_view(id).unwrap();
        before.sort();
        assert_eq!(before, [key("1"), key("2")], "the set before the hold");
        // The reload reads {2, 4}: 3 came and went, 4 came, 1 is still out.
        let reloaded = set(&["2", "4"]);
        let delta = SetDelta { entered: vec![key("4")], left: vec![key("1")] };
        hold.merge(3, 0, &SetChange { set: id, subquery: &subquery, delta: &delta, now: &reloaded });
        assert!(!hold.awaits_sets());
        assert_eq!(hold.moved_values(), (1, 1));
        assert_eq!((hold.sets[0].entered.as_slice(), hold.sets[0].left.as_slice()), (&[key("4")][..], &[key("1")][..]));
    }
}
