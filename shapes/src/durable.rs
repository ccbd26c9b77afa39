//! Durable writes of whole files.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Writes a small file so that it is either wholly there or absent after a crash.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let (tmp, file) = write_beside(path, contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes `contents` to a temporary file beside `path` and renames it over `path`, syncing
/// nothing: for a caller that makes a batch of such files durable with one
/// [`sync_filesystem`]. Until that sync, a crash may leave the file absent or empty, so a
/// reader must treat either as "never written".
pub fn replace_unsynced(path: &Path, contents: &[u8]) -> io::Result<()> {
    let (tmp, _) = write_beside(path, contents)?;
    fs::rename(tmp, path)
}

/// Writes `contents` to `path` with the extension `tmp`; returns that path and the file.
fn write_beside(path: &Path, contents: &[u8]) -> io::Result<(std::path::PathBuf, File)> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(contents)?;
    Ok((tmp, file))
}

/// Makes the entries of `dir` and `dir`'s own entry in its parent durable.
pub fn sync_dir_and_parent(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    match dir.parent() {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

/// Makes every written file on `path`'s filesystem durable with one call (`syncfs`), which
/// is far cheaper than one `fdatasync` per shape log when a batch touches many shapes.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    let dir = File::open(path)?;
    rustix::fs::syncfs(&dir).map_err(io::Error::from)
}
