//! Password authentication: a file of salted PBKDF2-HMAC-SHA256 hashes.
//!
//! One line per user: `user:pbkdf2-sha256$ITERATIONS$SALT_HEX$HASH_HEX`.
//! `courier passwd` writes it. Verifying is deliberately slow, so successful
//! verifications are remembered (as a keyed digest, never the password) and
//! reconnect storms do not pay the cost again.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use parking_lot::Mutex;
use ring::{digest, pbkdf2, rand::SecureRandom};

/// Default PBKDF2 iteration count for new hashes.
pub const DEFAULT_ITERATIONS: u32 = 100_000;

/// A password file problem.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read or written.
    #[error("password file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A line is not in the expected format.
    #[error("password file line {line}: {reason}")]
    Format {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The system random source failed.
    #[error("random source failed")]
    Random,
}

#[derive(Debug, Clone)]
struct Entry {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

/// Users and their password hashes.
#[derive(Debug, Default)]
pub struct PasswordFile {
    users: HashMap<String, Entry>,
    verified: Mutex<HashMap<String, digest::Digest>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Equality without an early exit, so timing does not reveal the prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn keyed(salt: &[u8], password: &[u8]) -> digest::Digest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(salt);
    ctx.update(password);
    ctx.finish()
}

impl PasswordFile {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<PasswordFile, AuthError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason| AuthError::Format {
                line: i + 1,
                reason,
            };
            let (user, rest) = line.split_once(':').ok_or(err("missing ':'"))?;
            let parts: Vec<&str> = rest.split('$').collect();
            let [scheme, iters, salt, hash] = parts[..] else {
                return Err(err("expected scheme$iterations$salt$hash"));
            };
            if scheme != "pbkdf2-sha256" {
                return Err(err("unknown scheme"));
            }
            let iterations = iters
                .parse::<u32>()
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or(err("bad iteration count"))?;
            let salt = unhex(salt).ok_or(err("bad salt"))?;
            let hash = unhex(hash).ok_or(err("bad hash"))?;
            users.insert(
                user.to_owned(),
                Entry {
                    iterations,
                    salt,
                    hash,
                },
            );
        }
        Ok(PasswordFile {
            users,
            verified: Mutex::default(),
        })
    }

    /// Reads a password file; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        match std::fs::read_to_string(path) {
            Ok(t) => Self::parse(&t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PasswordFile::default()),
            Err(source) => Err(AuthError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Writes the file (mode 0600 on Unix).
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        let mut names: Vec<&String> = self.users.keys().collect();
        names.sort();
        let mut text = String::new();
        for n in names {
            let e = &self.users[n];
            text.push_str(&format!(
                "{n}:pbkdf2-sha256${}${}${}\n",
                e.iterations,
                hex(&e.salt),
                hex(&e.hash)
            ));
        }
        let io = |source| AuthError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::write(path, text).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        Ok(())
    }

    /// Sets (or replaces) a user's password.
    pub fn set(&mut self, user: &str, password: &[u8], iterations: u32) -> Result<(), AuthError> {
        let iterations = NonZeroU32::new(iterations).ok_or(AuthError::Random)?;
        let mut salt = vec![0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| AuthError::Random)?;
        let mut hash = vec![0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password,
            &mut hash,
        );
        self.verified.lock().remove(user);
        self.users.insert(
            user.to_owned(),
            Entry {
                iterations,
                salt,
                hash,
            },
        );
        Ok(())
    }

    /// Removes a user. True if it existed.
    pub fn remove(&mut self, user: &str) -> bool {
        self.verified.lock().remove(user);
        self.users.remove(user).is_some()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks a password (constant-time comparison).
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(e) = self.users.get(user) else {
            return false;
        };
        let k = keyed(&e.salt, password);
        if let Some(prev) = self.verified.lock().get(user) {
            if same(prev.as_ref(), k.as_ref()) {
                return true;
            }
        }
        let ok = pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            e.iterations,
            &e.salt,
            password,
            &e.hash,
        )
        .is_ok();
        if ok {
            self.verified.lock().insert(user.to_owned(), k);
        }
        ok
    }
}

/// Reads a secret (a signing key, the admin key) from `path`, creating it
/// (32 random bytes, hex, readable by the owner only) if it does not exist.
pub fn load_or_create_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() < 16 => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "holds fewer than 16 characters: too short for a secret",
            ))
        }
        Ok(s) => return Ok(s.trim().as_bytes().to_vec()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let mut raw = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| std::io::Error::other("no randomness"))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    std::io::Write::write_all(&mut f, hex.as_bytes())?;
    f.sync_all()?;
    Ok(hex.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_save_load_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let mut pf = PasswordFile::default();
        pf.set("alice", b"s3cret", 1000).unwrap();
        pf.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cret"));
        let pf = PasswordFile::load(&path).unwrap();
        assert!(pf.verify("alice", b"s3cret"));
        assert!(pf.verify("alice", b"s3cret"), "cached path");
        assert!(!pf.verify("alice", b"wrong"));
        assert!(!pf.verify("bob", b"s3cret"));
    }

    #[test]
    fn bad_lines_are_reported() {
        assert!(matches!(
            PasswordFile::parse("alice:md5$1$aa$bb"),
            Err(AuthError::Format { line: 1, .. })
        ));
        assert!(PasswordFile::parse("# comment\n\n").unwrap().is_empty());
    }
}
