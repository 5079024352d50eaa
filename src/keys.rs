//! Key files: where a cluster's secrets live, how they are read, checked
//! and written.
//!
//! # Format
//!
//! A text file, mode 0600 (or stricter), one secret per line in hex (at
//! least 32 bytes, so 64 hex digits); lines starting with `#` and blank
//! lines are ignored. The **first** key is the one the node sends with;
//! every key in the file is accepted. This makes a rotation three edits of
//! one file, each followed by a reload on every node (as Consul's keyring:
//! install, use, remove):
//!
//! 1. append the new key (`cachecast keygen --append FILE`): it is accepted
//!    everywhere, still unused;
//! 2. once every member holds it (`cachecast members` shows the key ids
//!    each holds), move it first: nodes send with it;
//! 3. once every member sends with it, and a retransmit ring's age later,
//!    delete the old line.
//!
//! ```text
//! # cachecast key file: the first key sends, every key is accepted.
//! # key 5d1c0a7e
//! 9f0c…(64 hex digits)
//! ```
//!
//! A file that is missing, not a regular file, readable or writable by
//! group or others, larger than 64 KiB, or holding a line that is not a
//! secret is refused with an error that says which and how to fix it.
//! Secrets are wiped from memory once the keys are derived.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::wire::{self, Key, KeyError, Keyring, MAX_HELD_KEYS, MAX_SECRET_LEN, MIN_SECRET_LEN};

/// The environment variable naming the key file when no `--key-file` or
/// `NodeConfig::key_file` does.
pub const KEY_FILE_ENV: &str = "CACHECAST_KEY_FILE";

/// Largest key file read.
const MAX_FILE: u64 = 64 * 1024;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// It could not be opened or read.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Group or others may read or write it.
    #[error("key file {path} has mode {mode:04o}: group and others must have no access (chmod 600 {path})")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It is not a valid key file.
    #[error("key file {path}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (which line).
        problem: String,
    },
    /// It exists (when writing a new one).
    #[error("key file {0} already exists (remove it first, or --append a key to it)")]
    Exists(PathBuf),
}

/// The secrets of a key file, in its order (the first sends). Wiped when
/// dropped.
pub struct KeyFile {
    secrets: Vec<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile").field("ids", &self.ids()).finish()
    }
}

impl KeyFile {
    /// Reads and checks the key file at `path`.
    pub fn load(path: &Path) -> Result<KeyFile, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let invalid = |problem: String| KeyFileError::Invalid {
            path: path.to_owned(),
            problem,
        };
        // One open: the checks and the read are of the same file (no swap
        // in between), and at most MAX_FILE + 1 bytes are read.
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(invalid("not a regular file".into()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        if meta.len() > MAX_FILE {
            return Err(invalid(format!(
                "{} bytes; a key file is at most {MAX_FILE}",
                meta.len()
            )));
        }
        let mut text = Zeroizing::new(Vec::new());
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE + 1), &mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_FILE {
            return Err(invalid("grew past 64 KiB while read".into()));
        }
        Self::parse(&text).map_err(invalid)
    }

    /// Parses a key file's contents (see the module docs).
    pub fn parse(text: &[u8]) -> Result<KeyFile, String> {
        let text = std::str::from_utf8(text).map_err(|_| "not text (UTF-8)".to_string())?;
        let mut secrets: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = n + 1;
            if line.len() % 2 != 0 || !line.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "line {n} is not a key: expected hex digits (cachecast keygen writes a key file)"
                ));
            }
            let bytes = line.len() / 2;
            if bytes < MIN_SECRET_LEN {
                return Err(format!(
                    "line {n}: the key has {bytes} bytes; at least {MIN_SECRET_LEN} are needed"
                ));
            }
            if bytes > MAX_SECRET_LEN {
                return Err(format!(
                    "line {n}: the key has {bytes} bytes; at most {MAX_SECRET_LEN}"
                ));
            }
            let mut secret = Zeroizing::new(vec![0u8; bytes]);
            for (i, pair) in line.as_bytes().chunks(2).enumerate() {
                secret[i] = (hex_digit(pair[0]) << 4) | hex_digit(pair[1]);
            }
            if secrets.len() == MAX_HELD_KEYS {
                return Err(format!("more than {MAX_HELD_KEYS} keys"));
            }
            let id = wire::key_id(&secret);
            if secrets.iter().any(|s| wire::key_id(s) == id) {
                return Err(format!("line {n}: key {id:08x} is in the file twice"));
            }
            secrets.push(secret);
        }
        if secrets.is_empty() {
            return Err("holds no key".into());
        }
        Ok(KeyFile { secrets })
    }

    /// The key ids, in the file's order (the first sends).
    pub fn ids(&self) -> Vec<u32> {
        self.secrets.iter().map(|s| wire::key_id(s)).collect()
    }

    /// The keyring of cluster `cluster` ([`wire::cluster_hash`] of its
    /// name): every key, sending with the first.
    pub fn keyring(&self, cluster: u32) -> Result<Keyring, KeyError> {
        let keys = self
            .secrets
            .iter()
            .map(|s| Key::derive(s, cluster))
            .collect::<Result<Vec<_>, _>>()?;
        let send = keys.first().map(Key::id);
        Keyring::new(keys, send)
    }
}

fn hex_digit(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// A new secret: 32 bytes from the OS's random source.
pub fn generate() -> Zeroizing<Vec<u8>> {
    use rand::RngCore;
    let mut secret = Zeroizing::new(vec![0u8; MIN_SECRET_LEN]);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    secret
}

/// The line of a key file that holds `secret`, with a comment naming its
/// id above it.
pub fn key_lines(secret: &[u8]) -> Zeroizing<String> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = Zeroizing::new(String::with_capacity(20 + 2 * secret.len()));
    s.push_str(&format!("# key {:08x}\n", wire::key_id(secret)));
    for b in secret {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s.push('\n');
    s
}

/// Writes a new key file at `path` holding one new key, mode 0600 from the
/// start (never readable by others, even briefly). Refuses to replace a
/// file. Returns the key's id.
pub fn write_new(path: &Path) -> Result<u32, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let secret = generate();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists(path.to_owned())
            } else {
                io(e)
            }
        })?;
    let mut text = Zeroizing::new(String::from(
        "# cachecast key file: the first key sends, every key is accepted.\n",
    ));
    text.push_str(&key_lines(&secret));
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(wire::key_id(&secret))
}

/// Appends a new key to the key file at `path` (checked first, as
/// [`KeyFile::load`] does): accepted by the nodes that reload the file, not
/// yet sent with. Returns its id.
pub fn append_new(path: &Path) -> Result<u32, KeyFileError> {
    let held = KeyFile::load(path)?;
    if held.secrets.len() >= MAX_HELD_KEYS {
        return Err(KeyFileError::Invalid {
            path: path.to_owned(),
            problem: format!("already holds {MAX_HELD_KEYS} keys; remove a retired one first"),
        });
    }
    let secret = generate();
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    // A last line without its newline must not run into the new key.
    let ends_in_newline = {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(path).map_err(io)?;
        let mut last = [0u8; 1];
        f.seek(SeekFrom::End(-1))
            .and_then(|_| f.read_exact(&mut last))
            .map_err(io)?;
        last[0] == b'\n'
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io)?;
    let mut lines = Zeroizing::new(String::new());
    if !ends_in_newline {
        lines.push('\n');
    }
    lines.push_str(&key_lines(&secret));
    f.write_all(lines.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(wire::key_id(&secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_after_a_last_line_without_newline() {
        let dir = std::env::temp_dir().join(format!("cachecast-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        let _ = std::fs::remove_file(&path);
        let first = write_new(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(write_new(&path), Err(KeyFileError::Exists(_))));
        // Strip the final newline, as an editor may.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.trim_end()).unwrap();
        let second = append_new(&path).unwrap();
        assert_eq!(KeyFile::load(&path).unwrap().ids(), vec![first, second]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = KeyFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parses_keys_in_order_and_refuses_bad_lines() {
        let a = "11".repeat(32);
        let b = "22".repeat(40);
        let f = KeyFile::parse(format!("# c\n\n{a}\n  {b}  \n").as_bytes()).unwrap();
        assert_eq!(
            f.ids(),
            vec![wire::key_id(&[0x11; 32]), wire::key_id(&[0x22; 40])]
        );
        let ring = f.keyring(7).unwrap();
        assert_eq!(ring.ids(), f.ids());
        assert_eq!(ring.sending().unwrap().id(), f.ids()[0]);
        for (text, want) in [
            ("".to_string(), "no key"),
            ("11".repeat(31), "at least 32"),
            (format!("{a}x"), "line 1 is not a key"),
            (format!("{a}\n{a}"), "twice"),
            ("1".repeat(65), "line 1 is not a key"),
            ("ab".repeat(MAX_SECRET_LEN + 1), "at most"),
        ] {
            let e = KeyFile::parse(text.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
        let many: String = (0..=MAX_HELD_KEYS)
            .map(|i| format!("{:02x}", i + 1).repeat(32) + "\n")
            .collect();
        assert!(KeyFile::parse(many.as_bytes())
            .unwrap_err()
            .contains("more than"));
    }
}
