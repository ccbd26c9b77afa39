//! What a subquery shape's log reflects of its sets (docs/subqueries.md, "Durability"):
//! the values of each set its own filter tests, as of the shape's creation or its last
//! move. A move writes the views it leaves behind, with the log position of its splice,
//! before the splice can be durable, so after a crash the log's end says which views hold:
//! a restart compares them with the sets loaded afresh and moves the difference in or out.

use std::io;
use std::path::Path;

use shapes::durable::{replace_unsynced, sync_replaced, write_atomically};
use shapes::offset::Lsn;
use shapes::where_clause::SetKey;

const FILE: &str = "views.json";

/// Each set's values (by its subquery's SQL), sorted.
pub type Views = Vec<(String, Vec<SetKey>)>;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SetViews {
    /// The log position of the splice that moved from `before` to `after` (0: creation).
    at: u64,
    before: Views,
    after: Views,
}

impl SetViews {
    /// The views of a new shape.
    pub fn created(views: Views) -> SetViews {
        SetViews { at: 0, before: views.clone(), after: views }
    }

    /// The views a move leaves: `after` once the log holds its splice at `at`.
    pub fn moved(before: Views, at: Lsn, after: Views) -> SetViews {
        SetViews { at: at.0, before, after }
    }

    /// The views a log written through `written` reflects.
    pub fn as_of(&self, written: Lsn) -> &Views {
        if written.0 >= self.at { &self.after } else { &self.before }
    }

    pub fn read(dir: &Path) -> io::Result<Option<SetViews>> {
        match std::fs::read(dir.join(FILE)) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the views durably (before anything they describe can be).
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        write_atomically(&dir.join(FILE), &serde_json::to_vec(self).map_err(io::Error::other)?)
    }

    /// Replaces the views, not yet durably: the fan-out makes a batch's views durable
    /// together ([`SetViews::sync`] or the filesystem) before it appends the splices.
    pub fn put(&self, dir: &Path) -> io::Result<()> {
        replace_unsynced(&dir.join(FILE), &serde_json::to_vec(self).map_err(io::Error::other)?)
    }

    /// Makes views [`SetViews::put`] in `dir` durable.
    pub fn sync(dir: &Path) -> io::Result<()> {
        sync_replaced(&dir.join(FILE))
    }

    /// The views as the log will reflect them after this move (for a later move of the
    /// same batch, whose log does not hold this one yet).
    pub fn after(&self) -> &Views {
        &self.after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_end_says_which_views_hold() {
        let before = vec![("S".to_string(), vec![vec![Some("1".to_string())]])];
        let after = vec![("S".to_string(), vec![vec![Some("1".to_string())], vec![Some("2".to_string())]])];
        let views = SetViews::moved(before.clone(), Lsn(100), after.clone());
        assert_eq!(views.as_of(Lsn(99)), &before, "the splice is not in the log");
        assert_eq!(views.as_of(Lsn(100)), &after);
        assert_eq!(SetViews::created(after.clone()).as_of(Lsn(0)), &after);
    }
}
