//! The files Tally writes beside its database (the database itself, its lock, backups,
//! restores, exports): readable by their owner only, since they hold who changed what, and
//! on disk, name included, before they are reported done.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Makes `options` create files readable and writable by their owner only (`0600`).
pub fn owner_only(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
    options
}

/// Creates the new file `path`, owner only; an existing file is an `AlreadyExists` error and
/// is never touched.
///
/// # Errors
/// What the file system said.
pub fn create_new_private(path: &Path) -> io::Result<File> {
    owner_only(OpenOptions::new().write(true).create_new(true)).open(path)
}

/// Syncs `file` (at `path`) and then its folder, so that the file and its name both survive
/// a crash.
///
/// # Errors
/// What the file system said.
pub fn sync_with_folder(file: &File, path: &Path) -> io::Result<()> {
    file.sync_all()?;
    if let Some(folder) = path.parent().filter(|folder| !folder.as_os_str().is_empty()) {
        File::open(folder)?.sync_all()?;
    }
    Ok(())
}
