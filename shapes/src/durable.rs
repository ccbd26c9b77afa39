//! Durable writes of whole files.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Writes a small file so that it is either wholly there or absent after a crash.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Makes every written file on `path`'s filesystem durable with one call (`syncfs`), which
/// is far cheaper than one `fdatasync` per shape log when a batch touches many shapes.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    let dir = File::open(path)?;
    rustix::fs::syncfs(&dir).map_err(io::Error::from)
}
