//! Atomic output: readers (a running QEMU, a boot loader) see the old file or the new one,
//! never a partial one, and a failed build leaves nothing behind.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `path` through `fill`: into a temporary file in the same directory (so the rename
/// cannot cross file systems), fsynced, then renamed over `path`, then the directory
/// fsynced. On error the temporary file is removed and `path` is untouched.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> io::Result<()> {
    if path.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "the output path is a directory",
        ));
    }
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the output path has no file name",
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".");
    // Dropping `tmp` before `persist` deletes the file: every early return cleans up.
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    fill(tmp.as_file_mut())?;
    tmp.as_file_mut().flush()?;
    // tempfile creates 0600; an initrd is not secret and is read by other users (QEMU).
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Makes the rename itself durable.
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_and_sets_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("initrd");
        fs::write(&out, b"old").unwrap();
        write_atomically(&out, |f| f.write_all(b"new")).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(listing(tmp.path()), ["initrd"]);
    }

    #[test]
    fn failure_midway_leaves_old_file_and_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("initrd");
        fs::write(&out, b"old").unwrap();
        let e = write_atomically(&out, |f| {
            f.write_all(b"partial")?;
            Err(io::Error::other("injected"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "injected");
        assert_eq!(fs::read(&out).unwrap(), b"old");
        assert_eq!(listing(tmp.path()), ["initrd"]);
    }

    #[test]
    fn directory_and_missing_parent_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(write_atomically(tmp.path(), |_| Ok(())).is_err());
        assert!(write_atomically(&tmp.path().join("no/such/dir/x"), |_| Ok(())).is_err());
        assert!(listing(tmp.path()).is_empty());
    }
}
