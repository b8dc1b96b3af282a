//! Reading the files an operator names (the configuration, the tokens file) so that no file
//! can block the reader or grow it without bound.
//!
//! The file is opened with `O_NONBLOCK` (opening a FIFO with no writer, or a device that
//! waits for a carrier, returns at once instead of blocking), then the opened handle itself
//! is checked (`fstat`): only a regular file is read, and only up to a cap. Checking the
//! handle rather than the path leaves no window in which the path can be swapped for a FIFO
//! or a symlink to `/dev/zero` between the check and the read.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why a file was not read.
#[derive(Debug)]
pub enum ReadError {
    /// Opening or reading failed (it does not exist, no permission, …).
    Io(io::Error),
    /// A FIFO, a device, a socket or a directory.
    NotRegular,
    /// Larger than the cap (in bytes).
    TooLarge(u64),
}

impl ReadError {
    /// The file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "cannot read the file: {e}"),
            ReadError::NotRegular => {
                f.write_str("is not a regular file (a FIFO, a device or a directory?)")
            }
            ReadError::TooLarge(max) => write!(f, "the file is larger than {max} bytes"),
        }
    }
}

/// The bytes of the regular file at `path` (symlinks followed), at most `max` of them.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let file = OpenOptions::new()
        .read(true)
        // O_NOCTTY: a terminal device named here must not become the controlling terminal.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge(max));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: read one byte past the cap to tell.
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("k2p-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_regular_files_up_to_the_cap() {
        let d = dir("regular");
        let f = d.join("a.txt");
        std::fs::write(&f, "hello").unwrap();
        assert_eq!(read_capped(&f, 5).unwrap(), b"hello");
        assert!(matches!(read_capped(&f, 4), Err(ReadError::TooLarge(4))));
        let link = d.join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(read_capped(&link, 100).unwrap(), b"hello");
        let e = read_capped(&d.join("missing"), 100).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_without_blocking() {
        let d = dir("kinds");
        let started = Instant::now();
        // A FIFO with no writer: a plain open would block for good.
        let fifo = d.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        assert!(matches!(
            read_capped(&fifo, 100),
            Err(ReadError::NotRegular)
        ));
        // /dev/zero through a symlink: a plain read would never end.
        let zero = d.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(
            read_capped(&zero, 100),
            Err(ReadError::NotRegular)
        ));
        assert!(matches!(read_capped(&d, 100), Err(ReadError::NotRegular)));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(read_capped(&fifo, 100)
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
