//! The tokens file: format and atomic writes.
//!
//! One token per line; blank lines and `#` comments are ignored, so any hand-written list
//! works. Tokens the proxy got by signing in are preceded by a `# account=<email>` comment,
//! which keeps the token tied to its account across restarts (other readers just skip it).
//!
//! Every write is atomic: the new content goes to a temporary file (mode 0600) in the same
//! directory, is flushed to disk, the previous file is kept as `<name>.bak` (itself written
//! the same way), and the temporary file is renamed over the old one. A crash at any point
//! leaves either the old or the new file, whole; never an empty or half-written one.
//!
//! Every read (the file itself, and the previous version a write keeps) goes through
//! [`crate::files::read_capped`]: a FIFO or a device at the path is refused rather than
//! read, and the file is read up to [`MAX_BYTES`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::files::{read_capped, ReadError};

const ACCOUNT_TAG: &str = "# account=";

/// A token, and the account it was signed in with (when the file says so).
pub type Listed = (String, Option<String>);

/// Largest tokens file read: room for thousands of tokens (a JWT is about 1 KB).
pub const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// The tokens in the file at `path`, as [`parse`] gives them; `Ok(None)` when the file
/// does not exist (yet). Only a regular file of at most [`MAX_BYTES`] is read.
pub fn read(path: &Path) -> Result<Option<Vec<Listed>>, String> {
    match read_capped(path, MAX_BYTES) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => Ok(Some(parse(&text))),
            Err(_) => Err("the file is not UTF-8 text".to_string()),
        },
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Tokens in file order, each with the account it came from (if annotated).
pub fn parse(text: &str) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut account: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(a) = line.strip_prefix(ACCOUNT_TAG) {
            let a = a.trim();
            account = (!a.is_empty()).then(|| a.to_string());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push((line.to_string(), account.take()));
    }
    out
}

/// The file content for these tokens (`account` for signed-in ones).
pub fn format<'a>(tokens: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> String {
    let mut s = String::from(
        "# k2proxy tokens: one per line. Lines starting with # are comments;\n\
         # `# account=<email>` marks the next token as signed in with that account.\n",
    );
    for (token, account) in tokens {
        if let Some(a) = account {
            s.push_str(ACCOUNT_TAG);
            s.push_str(a);
            s.push('\n');
        }
        s.push_str(token);
        s.push('\n');
    }
    s
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Write `contents` to `path` through a temporary file, fsync, rename.
fn replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = sibling(path, &format!(".tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replace the file atomically, keeping the previous version as `<name>.bak`.
pub fn write_atomic(path: &Path, contents: &str) -> io::Result<()> {
    match read_capped(path, MAX_BYTES) {
        Ok(previous) => replace(&sibling(path, ".bak"), &previous)?,
        Err(e) if e.is_not_found() => {}
        Err(ReadError::Io(e)) => return Err(e),
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidInput, e.to_string())),
    }
    replace(path, contents.as_bytes())?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename itself durable.
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parse_and_format_round_trip() {
        let text = format([("tok-a", None), ("eyJ.b", Some("a@x.io")), ("tok-c", None)]);
        assert_eq!(
            parse(&text),
            vec![
                ("tok-a".to_string(), None),
                ("eyJ.b".to_string(), Some("a@x.io".to_string())),
                ("tok-c".to_string(), None),
            ]
        );
        // hand-written files: comments, blanks, CRLF, indentation
        let hand = "# mine\r\n\r\n  tok-1  \r\n#tok-2\r\n# account=b@x.io\r\n\r\ntok-3\r\n";
        assert_eq!(
            parse(hand),
            vec![
                ("tok-1".to_string(), None),
                ("tok-3".to_string(), Some("b@x.io".to_string()))
            ]
        );
    }

    #[test]
    fn writes_atomically_with_backup_and_0600() {
        let dir = std::env::temp_dir().join(format!("k2p-tokfile-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.txt");
        write_atomic(&path, "first\n").unwrap();
        assert!(!sibling(&path, ".bak").exists());
        write_atomic(&path, "second\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "second\n");
        assert_eq!(
            fs::read_to_string(sibling(&path, ".bak")).unwrap(),
            "first\n"
        );
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty());
        // a failed write (directory gone) leaves no partial file behind and reports the error
        fs::remove_dir_all(&dir).unwrap();
        assert!(write_atomic(&path, "third\n").is_err());
    }
}
