//! What a subquery shape's log reflects of its sets (docs/subqueries.md, "Durability"):
//! the values of each set its own filter tests, as of the shape's creation or its last
//! move. A move writes the views it leaves behind, with the log position of its splice,
//! before the splice can be durable, so after a crash the log's end says which views hold:
//! a restart compares them with the sets loaded afresh and moves the difference in or out.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use shapes::durable::{replace_unsynced, write_atomically};
use shapes::offset::Lsn;
use shapes::where_clause::SetKey;

/// One JSON line per move, the last whole one holding.
const FILE: &str = "views.json";
/// Past this size the file is rewritten with its last views only.
const COMPACT_AT: u64 = 1 << 20;

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

    /// The last views written whole (a move appends its views as one line; a line cut
    /// short by a crash is not whole, and the one before it holds).
    pub fn read(dir: &Path) -> io::Result<Option<SetViews>> {
        let bytes = match std::fs::read(dir.join(FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let last = bytes.split(|&b| b == b'\n').rev().find_map(|line| serde_json::from_slice(line).ok());
        last.map(Some).ok_or_else(|| io::Error::other("no whole set views in views.json"))
    }

    /// Writes the views of a new shape, durable after the caller's filesystem sync (which
    /// comes before its snapshot is complete, so before anything they describe is served).
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        replace_unsynced(&dir.join(FILE), &serde_json::to_vec(self).map_err(io::Error::other)?)
    }

    /// Appends the views, not yet durably: the fan-out makes a batch's views durable
    /// together ([`SetViews::sync`] or the filesystem) before it appends the splices.
    /// Appending to the one file, instead of renaming a new one over it, spares the
    /// filesystem an inode per move; past [`COMPACT_AT`] the file is rewritten to one line.
    pub fn put(&self, dir: &Path) -> io::Result<()> {
        let path = dir.join(FILE);
        let mut line = b"\n".to_vec();
        serde_json::to_writer(&mut line, self).map_err(io::Error::other)?;
        let mut file = OpenOptions::new().append(true).open(&path)?;
        if file.metadata()?.len() + line.len() as u64 > COMPACT_AT {
            drop(file);
            return write_atomically(&path, &line[1..]);
        }
        file.write_all(&line)
    }

    /// Makes views [`SetViews::put`] in `dir` durable.
    pub fn sync(dir: &Path) -> io::Result<()> {
        File::open(dir.join(FILE))?.sync_data()
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

    #[test]
    fn moves_append_their_views_and_a_line_cut_short_leaves_the_one_before() {
        let dir = std::env::temp_dir().join(format!("views-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let views = |v: &str| vec![("S".to_string(), vec![vec![Some(v.to_string())]])];
        SetViews::created(views("1")).write(&dir).unwrap();
        let moved = SetViews::moved(views("1"), Lsn(100), views("2"));
        moved.put(&dir).unwrap();
        SetViews::sync(&dir).unwrap();
        assert_eq!(SetViews::read(&dir).unwrap(), Some(moved.clone()));
        // A crash in the middle of the next append.
        let mut file = OpenOptions::new().append(true).open(dir.join(FILE)).unwrap();
        file.write_all(b"\n{\"at\":200,\"bef").unwrap();
        assert_eq!(SetViews::read(&dir).unwrap(), Some(moved));
        let _ = std::fs::remove_dir_all(dir);
    }
}
