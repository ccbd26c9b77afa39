//! Durable writes of whole files.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Writes a small file so that it is either wholly there or absent after a crash.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    replace(path, contents, true)?;
    sync_parent(path)
}

/// Replaces a small file by renaming a new one over it, without waiting for the disk: after
/// a crash it is the old file or the new one, whole, once the caller has made it durable
/// (the file and its folder, [`sync_parent`], or the filesystem, [`sync_filesystem`]).
pub fn replace_unsynced(path: &Path, contents: &[u8]) -> io::Result<()> {
    replace(path, contents, false)
}

fn replace(path: &Path, contents: &[u8], sync: bool) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        if sync {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, path)
}

/// Makes a file replaced by [`replace_unsynced`] durable: its data, then its name.
pub fn sync_replaced(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Makes every written file on `path`'s filesystem durable with one call (`syncfs`), which
/// is far cheaper than one `fdatasync` per shape log when a batch touches many shapes.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    let dir = File::open(path)?;
    rustix::fs::syncfs(&dir).map_err(io::Error::from)
}
