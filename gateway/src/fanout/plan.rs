//! Decides what one change means for one shape: an insert, update or delete message, a
//! key-change pair, or nothing. Pure: rows in, planned messages out.
//!
//! Rows moving into the filter become inserts (with the full row), rows moving out become
//! deletes, and clients never receive an update for a row they do not hold.

use shapes::change::{Cell, Change};
use shapes::contract::Operation;
use shapes::shape::{Replica, Shape};
use shapes::subquery_set::{RowWithSets, SetLookup};
use shapes::where_clause::EvalError;
use shapes::wire::MessageEncoder;

/// (column, value) pairs; cells share the decoded buffers, nothing is copied.
pub type Fields = Vec<(usize, Cell)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub op: Operation,
    pub key: String,
    pub value: Fields,
    pub old_value: Option<Fields>,
    pub key_change_to: Option<String>,
    pub key_change_from: Option<String>,
    /// The row's value of the shape's tag column ([`Shape::tag_column`]), and the one it
    /// had when an update changed it.
    pub link: Option<String>,
    pub link_before: Option<String>,
    /// Brought by a move query (`is_move_in` on the wire).
    pub move_in: bool,
}

impl Planned {
    pub fn new(op: Operation, key: String, value: Fields) -> Planned {
        Planned {
            op,
            key,
            value,
            old_value: None,
            key_change_to: None,
            key_change_from: None,
            link: None,
            link_before: None,
            move_in: false,
        }
    }

    fn linked(mut self, link: Option<String>) -> Planned {
        self.link = link;
        self
    }
}

fn complete(row: &[Cell]) -> Result<(), EvalError> {
    match row.iter().position(|c| *c == Cell::Unchanged) {
        Some(i) => Err(EvalError::Unavailable(i)),
        None => Ok(()),
    }
}

fn fields(row: &[Cell], cols: &[usize]) -> Fields {
    cols.iter()
        .filter(|&&i| row.get(i) != Some(&Cell::Unchanged))
        .map(|&i| (i, row.get(i).cloned().unwrap_or(Cell::Null)))
        .collect()
}

fn key_of(shape: &Shape, enc: &MessageEncoder, row: &[Cell]) -> String {
    enc.key(shape.key.iter().map(|&i| row.get(i).and_then(Cell::as_str)))
}

/// `sets` answers the shape's subqueries (the kept sets, or a view of them during a move).
pub fn plan(
    shape: &Shape,
    enc: &MessageEncoder,
    change: &Change,
    sets: &dyn SetLookup,
) -> Result<Vec<Planned>, EvalError> {
    let all = &shape.selected;
    let admits = |row: &[Cell]| shape.admits(&RowWithSets { row, sets });
    let tag_column = shape.tag_column();
    let link = |row: &[Cell]| tag_column.and_then(|c| row.get(c)?.as_str().map(String::from));
    Ok(match change {
        Change::Insert { new } => {
            if admits(new.as_slice())? {
                complete(new)?;
                vec![Planned::new(Operation::Insert, key_of(shape, enc, new), fields(new, all)).linked(link(new))]
            } else {
                vec![]
            }
        }
        Change::Delete { old, old_is_full } => {
            if shape.is_filtered() && !old_is_full {
                return Err(EvalError::Value(
                    "a delete without the old row cannot be filtered (REPLICA IDENTITY is not FULL)".into(),
                ));
            }
            if !admits(old.as_slice())? {
                return Ok(vec![]);
            }
            let cols = if shape.spec.replica == Replica::Full && *old_is_full { all } else { &shape.key };
            vec![Planned::new(Operation::Delete, key_of(shape, enc, old), fields(old, cols)).linked(link(old))]
        }
        Change::Update { old, old_is_full, new } => {
            // Under REPLICA IDENTITY FULL, unchanged TOAST values come from the old row.
            let new: Vec<Cell> = match (old, old_is_full) {
                (Some(o), true) => {
                    new.iter().zip(o).map(|(n, o)| if *n == Cell::Unchanged { o.clone() } else { n.clone() }).collect()
                }
                _ => new.clone(),
            };
            let full_old = old.as_ref().filter(|_| *old_is_full);
            let was_in = match (shape.is_filtered(), full_old) {
                (false, _) => true,
                (true, Some(o)) => admits(o.as_slice())?,
                (true, None) => {
                    return Err(EvalError::Value(
                        "an update without the old row cannot be filtered (REPLICA IDENTITY is not FULL)".into(),
                    ));
                }
            };
            let is_in = admits(new.as_slice())?;
            let new_key = key_of(shape, enc, &new);
            let old_key = old.as_ref().map(|o| key_of(shape, enc, o)).unwrap_or_else(|| new_key.clone());
            match (was_in, is_in) {
                (false, false) => vec![],
                (false, true) => {
                    complete(&new)?;
                    vec![Planned::new(Operation::Insert, new_key, fields(&new, all)).linked(link(&new))]
                }
                (true, false) => {
                    let old_row = full_old.map(Vec::as_slice).unwrap_or(&new);
                    let cols = if shape.spec.replica == Replica::Full { all } else { &shape.key };
                    vec![Planned::new(Operation::Delete, old_key, fields(old_row, cols)).linked(link(old_row))]
                }
                (true, true) if old_key != new_key => {
                    complete(&new)?;
                    let old_row = old.as_deref().unwrap_or(&new);
                    let cols = if shape.spec.replica == Replica::Full && *old_is_full { all } else { &shape.key };
                    let mut delete =
                        Planned::new(Operation::Delete, old_key.clone(), fields(old_row, cols)).linked(link(old_row));
                    delete.key_change_to = Some(new_key.clone());
                    let mut insert = Planned::new(Operation::Insert, new_key, fields(&new, all)).linked(link(&new));
                    insert.key_change_from = Some(old_key);
                    vec![delete, insert]
                }
                (true, true) => {
                    let changed: Vec<usize> = match full_old {
                        Some(o) => all.iter().copied().filter(|&i| o.get(i) != new.get(i)).collect(),
                        None => all.iter().copied().filter(|&i| new.get(i) != Some(&Cell::Unchanged)).collect(),
                    };
                    if changed.is_empty() {
                        return Ok(vec![]);
                    }
                    let mut p = if shape.spec.replica == Replica::Full {
                        complete(&new)?;
                        Planned::new(Operation::Update, new_key, fields(&new, all))
                    } else {
                        let mut cols: Vec<usize> = shape.key.iter().copied().chain(changed.iter().copied()).collect();
                        cols.sort_unstable();
                        cols.dedup();
                        Planned::new(Operation::Update, new_key, fields(&new, &cols))
                    };
                    if shape.spec.replica == Replica::Full {
                        p.old_value = full_old.map(|o| fields(o, &changed));
                    }
                    p.link = link(&new);
                    p.link_before = full_old.and_then(|o| link(o)).filter(|before| Some(before) != p.link.as_ref());
                    vec![p]
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {

    use super::*;
    use shapes::set_registry::SetRegistry;
    use shapes::shape::{LogMode, ShapeSpec};
    use shapes::table::{Column, TableName, TableSchema};
    use shapes::where_clause::BindOptions;

    fn shape(filter: Option<&str>, replica: Replica) -> (Shape, MessageEncoder) {
        let col = |n: &str, t: &str, pk: Option<u32>| Column {
            name: n.into(),
            type_oid: 0,
            type_name: t.into(),
            type_sql: String::new(),
            dims: 0,
            type_mod: -1,
            not_null: pk.is_some(),
            pk_index: pk,
        };
        let table = TableSchema {
            oid: 1,
            name: TableName::new("public", "t"),
            columns: vec![col("id", "int8", Some(0)), col("org", "text", None), col("body", "text", None)],
            replica_identity_full: true,
        };
        let spec = ShapeSpec {
            where_text: filter.map(String::from),
            params: vec![],
            columns: None,
            replica,
            log: LogMode::Full,
            scope: None,
        };
        let s = Shape::bind(spec, table.clone(), BindOptions::default()).unwrap();
        (s, MessageEncoder::new(&table))
    }

    fn row(id: &str, org: &str, body: Cell) -> Vec<Cell> {
        vec![Cell::text(id), Cell::text(org), body]
    }

    #[test]
    fn update_moving_row_out_of_filter_emits_delete() {
        let (s, e) = shape(Some("org = 'a'"), Replica::Default);
        let change = Change::Update {
            old: Some(row("1", "a", Cell::text("x"))),
            old_is_full: true,
            new: row("1", "b", Cell::text("x")),
        };
        let p = plan(&s, &e, &change, &SetRegistry::default()).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].op, Operation::Delete);
        assert_eq!(p[0].value, vec![(0, Cell::text("1"))]);
    }

    #[test]
    fn update_moving_row_into_filter_emits_full_insert() {
        let (s, e) = shape(Some("org = 'b'"), Replica::Default);
        let change = Change::Update {
            old: Some(row("1", "a", Cell::text("x"))),
            old_is_full: true,
            new: row("1", "b", Cell::Unchanged),
        };
        let p = plan(&s, &e, &change, &SetRegistry::default()).unwrap();
        assert_eq!(p[0].op, Operation::Insert);
        assert_eq!(
            p[0].value,
            vec![(0, Cell::text("1")), (1, Cell::text("b")), (2, Cell::text("x"))],
            "TOAST value filled from the old row"
        );
    }

    #[test]
    fn update_within_filter_sends_key_and_changed_columns() {
        let (s, e) = shape(Some("org = 'a'"), Replica::Default);
        let change = Change::Update {
            old: Some(row("1", "a", Cell::text("x"))),
            old_is_full: true,
            new: row("1", "a", Cell::text("y")),
        };
        let p = plan(&s, &e, &change, &SetRegistry::default()).unwrap();
        assert_eq!(
            (p[0].op, p[0].value.clone()),
            (Operation::Update, vec![(0, Cell::text("1")), (2, Cell::text("y"))])
        );
        let same = Change::Update {
            old: Some(row("1", "a", Cell::text("x"))),
            old_is_full: true,
            new: row("1", "a", Cell::text("x")),
        };
        assert!(plan(&s, &e, &same, &SetRegistry::default()).unwrap().is_empty(), "nothing selected changed");
    }

    #[test]
    fn replica_full_sends_whole_row_and_old_values() {
        let (s, e) = shape(None, Replica::Full);
        let change = Change::Update {
            old: Some(row("1", "a", Cell::text("x"))),
            old_is_full: true,
            new: row("1", "a", Cell::text("y")),
        };
        let p = plan(&s, &e, &change, &SetRegistry::default()).unwrap();
        assert_eq!(p[0].value.len(), 3);
        assert_eq!(p[0].old_value, Some(vec![(2, Cell::text("x"))]));
    }

    #[test]
    fn key_change_splits_into_delete_and_insert() {
        let (s, e) = shape(None, Replica::Default);
        let change = Change::Update {
            old: Some(row("1", "a", Cell::text("x"))),
            old_is_full: true,
            new: row("2", "a", Cell::text("x")),
        };
        let p = plan(&s, &e, &change, &SetRegistry::default()).unwrap();
        assert_eq!((p[0].op, p[1].op), (Operation::Delete, Operation::Insert));
        assert_eq!(p[0].key_change_to.as_deref(), Some(p[1].key.as_str()));
        assert_eq!(p[1].key_change_from.as_deref(), Some(p[0].key.as_str()));
    }

    #[test]
    fn unknown_toast_value_for_a_new_row_is_an_error_not_a_wrong_value() {
        let (s, e) = shape(Some("org = 'b'"), Replica::Default);
        let change = Change::Update { old: None, old_is_full: false, new: row("1", "b", Cell::Unchanged) };
        assert!(plan(&s, &e, &change, &SetRegistry::default()).is_err());
    }
}
