//! The password file: mosquitto's `user:hash` lines, loaded once into a
//! [`PasswordFile`] that checks CONNECT passwords and hands SCRAM
//! credentials to [`super::scram`]; and the edits `tidemq passwd` makes
//! ([`set_password`], [`delete_user`]), which rewrite the file atomically.
//! It owns the hash formats and nothing else: which listener uses the file,
//! and on which thread, is the caller's business. Verifying is CPU-heavy
//! (argon2, PBKDF2), so the broker calls [`PasswordFile::verify`] on a
//! blocking thread.
//!
//! | prefix            | hash                                              | written by |
//! |-------------------|---------------------------------------------------|------------|
//! | `$7$I$SALT$HASH`  | PBKDF2-HMAC-SHA512, I rounds, 64-byte output      | mosquitto 2 `mosquitto_passwd` |
//! | `$6$SALT$HASH`    | SHA-512(password, salt)                           | mosquitto 1.x |
//! | `$argon2id$...`   | argon2id, PHC string                              | `tidemq passwd` (default) |
//! | `SCRAM-SHA-256$I:SALT$STOREDKEY:SERVERKEY` | SCRAM credential (PostgreSQL's form) | `tidemq passwd --scram` |
//!
//! Errors name the file and the line, never the line's text: a line may
//! hold a hash, or a password typed in the wrong place.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use thiserror::Error;

use super::scram::{ScramCredentials, DEFAULT_ITERATIONS, MAX_ITERATIONS};

/// Output length of `$6$` and `$7$` hashes: one SHA-512.
const SHA512_LEN: usize = 64;

/// Largest salt accepted in a `$6$` / `$7$` line, in bytes.
const MAX_SALT_LEN: usize = 64;

/// Largest argon2 memory cost accepted from a line, in KiB (1 GiB): a typo
/// must not make each login allocate all memory.
const MAX_ARGON2_MEMORY_KIB: u32 = 1024 * 1024;

/// Salt length for new hashes, in bytes.
const NEW_SALT_LEN: usize = 16;

/// Mode of a password file `set_password` creates: owner read/write only.
const NEW_FILE_MODE: u32 = 0o600;

/// Why the password file could not be used or changed.
#[derive(Debug, Error)]
pub enum PasswdError {
    #[error("cannot read password file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write password file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{}line {line}: {reason}", in_file(file.as_deref()))]
    BadLine {
        file: Option<PathBuf>,
        line: usize,
        reason: LineError,
    },
    #[error("invalid user name: {0}")]
    InvalidUser(&'static str),
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

fn in_file(file: Option<&Path>) -> String {
    file.map(|f| format!("password file {}, ", f.display()))
        .unwrap_or_default()
}

/// What is wrong with one line. Never carries the line's text.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LineError {
    #[error("no ':' between user name and hash")]
    MissingColon,
    #[error("empty user name")]
    EmptyUser,
    #[error("user name already given on line {0}")]
    DuplicateUser(usize),
    #[error("unknown hash kind (expected $7$, $6$, $argon2id$ or SCRAM-SHA-256$)")]
    UnknownKind,
    #[error("malformed {kind} hash: {what}")]
    Malformed {
        kind: &'static str,
        what: &'static str,
    },
}

/// The hash `tidemq passwd` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashKind {
    /// argon2id with the argon2 crate's default parameters.
    #[default]
    Argon2id,
    /// A SCRAM-SHA-256 credential: usable for CONNECT passwords and for the
    /// SCRAM-SHA-256 enhanced authentication method.
    Scram,
}

/// One user's stored hash, checked when the file is loaded.
#[derive(Clone)]
enum Entry {
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// The PHC string, already known to parse as argon2id.
    Argon2id(String),
    Scram(ScramCredentials),
}

impl Entry {
    /// The work a check costs, roughly, for choosing the decoy.
    fn cost(&self) -> u64 {
        match self {
            Entry::Argon2id(_) => u64::MAX,
            Entry::Pbkdf2Sha512 { iterations, .. } => u64::from(*iterations) * 2,
            Entry::Scram(credentials) => u64::from(credentials.iterations),
            Entry::Sha512 { .. } => 1,
        }
    }
}

/// The users of a password file and their hashes.
pub struct PasswordFile {
    users: HashMap<String, Entry>,
    /// The most expensive entry: an unknown user is checked against it (and
    /// refused), so an unknown name never answers faster than a known one.
    /// (In a file mixing kinds, a user with a cheaper hash still answers
    /// faster than an unknown name.)
    decoy: Option<Entry>,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl PasswordFile {
    /// Reads and checks the file; a bad line fails the whole load.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswdError> {
        let text = fs::read_to_string(path).map_err(|source| PasswdError::Read {
            path: path.to_owned(),
            source,
        })?;
        PasswordFile::parse(&text).map_err(|err| match err {
            PasswdError::BadLine { line, reason, .. } => PasswdError::BadLine {
                file: Some(path.to_owned()),
                line,
                reason,
            },
            other => other,
        })
    }

    /// Parses the text of a password file.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswdError> {
        let mut users = HashMap::new();
        let mut first_line = HashMap::new();
        let mut decoy = None;
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let bad = |reason| PasswdError::BadLine {
                file: None,
                line: number,
                reason,
            };
            let Some((user, hash)) = split_line(line).map_err(bad)? else {
                continue;
            };
            let entry = parse_entry(hash).map_err(bad)?;
            if let Some(earlier) = first_line.insert(user.to_owned(), number) {
                return Err(bad(LineError::DuplicateUser(earlier)));
            }
            if decoy
                .as_ref()
                .is_none_or(|d: &Entry| entry.cost() > d.cost())
            {
                decoy = Some(entry.clone());
            }
            users.insert(user.to_owned(), entry);
        }
        Ok(PasswordFile { users, decoy })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s. CPU-heavy: run it on a blocking
    /// thread. Hashes are compared in constant time. An unknown user is
    /// refused after as much work as the file's most expensive entry, so
    /// the time taken does not tell which names exist.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(entry) => entry.verify(password),
            None => {
                if let Some(decoy) = &self.decoy {
                    std::hint::black_box(decoy.verify(password));
                }
                false
            }
        }
    }

    /// `user`'s SCRAM credential, if the file has one for that user.
    pub fn scram_credentials(&self, user: &str) -> Option<ScramCredentials> {
        match self.users.get(user)? {
            Entry::Scram(credentials) => Some(credentials.clone()),
            _ => None,
        }
    }
}

/// `Ok(None)` for a blank or comment line, else the user and the hash.
fn split_line(line: &str) -> Result<Option<(&str, &str)>, LineError> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let (user, hash) = line
        .trim_end()
        .split_once(':')
        .ok_or(LineError::MissingColon)?;
    if user.is_empty() {
        return Err(LineError::EmptyUser);
    }
    Ok(Some((user, hash)))
}

fn parse_entry(hash: &str) -> Result<Entry, LineError> {
    if let Some(rest) = hash.strip_prefix("$7$") {
        parse_pbkdf2(rest)
    } else if let Some(rest) = hash.strip_prefix("$6$") {
        parse_sha512(rest)
    } else if hash.starts_with("$argon2id$") {
        parse_argon2id(hash)
    } else if hash.starts_with("SCRAM-SHA-256$") {
        ScramCredentials::parse_entry(hash)
            .map(Entry::Scram)
            .ok_or_else(|| malformed("SCRAM-SHA-256", "expected ITER:SALT$STOREDKEY:SERVERKEY"))
    } else {
        Err(LineError::UnknownKind)
    }
}

fn malformed(kind: &'static str, what: &'static str) -> LineError {
    LineError::Malformed { kind, what }
}

/// `ITERATIONS$SALT$HASH` after `$7$`.
fn parse_pbkdf2(rest: &str) -> Result<Entry, LineError> {
    let bad = |what| malformed("$7$", what);
    let (iterations, salt_and_hash) = rest.split_once('$').ok_or(bad("missing fields"))?;
    let iterations: u32 = iterations.parse().map_err(|_| bad("bad iteration count"))?;
    if !(1..=MAX_ITERATIONS).contains(&iterations) {
        return Err(bad("iteration count out of range"));
    }
    let (salt, hash) = parse_salt_and_hash(salt_and_hash).map_err(bad)?;
    Ok(Entry::Pbkdf2Sha512 {
        iterations,
        salt,
        hash,
    })
}

/// `SALT$HASH` after `$6$`.
fn parse_sha512(rest: &str) -> Result<Entry, LineError> {
    let (salt, hash) = parse_salt_and_hash(rest).map_err(|what| malformed("$6$", what))?;
    Ok(Entry::Sha512 { salt, hash })
}

fn parse_salt_and_hash(text: &str) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
    let (salt, hash) = text.split_once('$').ok_or("missing fields")?;
    let salt = B64.decode(salt).map_err(|_| "salt is not base64")?;
    let hash = B64.decode(hash).map_err(|_| "hash is not base64")?;
    if !(1..=MAX_SALT_LEN).contains(&salt.len()) {
        return Err("bad salt length");
    }
    if hash.len() != SHA512_LEN {
        return Err("hash is not 64 bytes");
    }
    Ok((salt, hash))
}

fn parse_argon2id(phc: &str) -> Result<Entry, LineError> {
    let bad = |what| malformed("argon2id", what);
    let parsed = PasswordHash::new(phc).map_err(|_| bad("not a PHC string"))?;
    let params = argon2::Params::try_from(&parsed).map_err(|_| bad("bad parameters"))?;
    if params.m_cost() > MAX_ARGON2_MEMORY_KIB {
        return Err(bad("memory cost above 1 GiB"));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(bad("missing salt or hash"));
    }
    Ok(Entry::Argon2id(phc.to_owned()))
}

impl Entry {
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Entry::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut derived = [0u8; SHA512_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut derived);
                derived.as_slice().ct_eq(hash).into()
            }
            Entry::Sha512 { salt, hash } => {
                let derived = Sha512::new()
                    .chain_update(password)
                    .chain_update(salt)
                    .finalize();
                derived.as_slice().ct_eq(hash).into()
            }
            // Checked at load, so parsing again cannot fail; argon2's
            // verifier compares in constant time.
            Entry::Argon2id(phc) => PasswordHash::new(phc)
                .is_ok_and(|parsed| Argon2::default().verify_password(password, &parsed).is_ok()),
            Entry::Scram(credentials) => credentials.verify_password(password),
        }
    }
}

/// The hash field of a new line for `password`, with a random salt.
pub fn hash_password(password: &str, kind: HashKind) -> Result<String, PasswdError> {
    let salt = rand::random::<[u8; NEW_SALT_LEN]>();
    match kind {
        HashKind::Argon2id => {
            let salt =
                SaltString::encode_b64(&salt).map_err(|e| PasswdError::Hash(e.to_string()))?;
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| PasswdError::Hash(e.to_string()))
        }
        HashKind::Scram => {
            let credentials =
                ScramCredentials::derive(password.as_bytes(), &salt, DEFAULT_ITERATIONS);
            Ok(credentials.to_entry())
        }
    }
}

/// Creates or updates `user`'s line in the file at `path`, keeping every
/// other line, comment and the order. Returns whether the user was new.
/// The file is replaced atomically (temp file in the same directory, then
/// rename); a new file gets mode 0600, an existing one keeps its mode.
pub fn set_password(
    path: &Path,
    user: &str,
    password: &str,
    kind: HashKind,
) -> Result<bool, PasswdError> {
    check_user_name(user)?;
    let hash = hash_password(password, kind)?;
    let existing = read_existing(path)?;
    let (text, permissions) = match existing {
        Some((text, permissions)) => (text, Some(permissions)),
        None => (String::new(), None),
    };
    let (lines, found) = replace_user_line(&text, user, Some(format!("{user}:{hash}")));
    write_atomically(path, &lines, permissions)?;
    Ok(!found)
}

/// Removes `user`'s line from the file at `path`; whether it was there.
/// The file must exist.
pub fn delete_user(path: &Path, user: &str) -> Result<bool, PasswdError> {
    let text = fs::read_to_string(path).map_err(|source| PasswdError::Read {
        path: path.to_owned(),
        source,
    })?;
    let (lines, found) = replace_user_line(&text, user, None);
    if found {
        let permissions = fs::metadata(path)
            .map(|m| m.permissions())
            .map_err(|source| PasswdError::Read {
                path: path.to_owned(),
                source,
            })?;
        write_atomically(path, &lines, Some(permissions))?;
    }
    Ok(found)
}

/// A name `set_password` may write: one that reads back as the same user.
fn check_user_name(user: &str) -> Result<(), PasswdError> {
    if user.is_empty() {
        return Err(PasswdError::InvalidUser("empty"));
    }
    if user.contains(':') {
        return Err(PasswdError::InvalidUser("contains ':'"));
    }
    if user.chars().any(char::is_control) {
        return Err(PasswdError::InvalidUser("contains a control character"));
    }
    if user.trim() != user || user.starts_with('#') {
        return Err(PasswdError::InvalidUser(
            "starts with '#' or with or ends with a space",
        ));
    }
    Ok(())
}

/// The file's text and mode, or `None` when there is no file yet.
fn read_existing(path: &Path) -> Result<Option<(String, Permissions)>, PasswdError> {
    let read_error = |source| PasswdError::Read {
        path: path.to_owned(),
        source,
    };
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let permissions = fs::metadata(path).map_err(read_error)?.permissions();
    Ok(Some((text, permissions)))
}

/// The lines of `text` with `user`'s line replaced by `replacement` (in
/// place of the first one; further ones dropped) or removed, and whether
/// the user had a line. A new user's line goes at the end.
fn replace_user_line(text: &str, user: &str, replacement: Option<String>) -> (Vec<String>, bool) {
    let mut replacement = replacement;
    let mut found = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        let is_user = matches!(split_line(line), Ok(Some((name, _))) if name == user);
        if !is_user {
            lines.push(line.to_owned());
            continue;
        }
        found = true;
        lines.extend(replacement.take());
    }
    lines.extend(replacement);
    (lines, found)
}

fn write_atomically(
    path: &Path,
    lines: &[String],
    permissions: Option<Permissions>,
) -> Result<(), PasswdError> {
    let write_error = |source| PasswdError::Write {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| write_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let temp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_temp(&temp, lines, permissions).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = fs::remove_file(&temp);
    }
    result.map_err(write_error)?;
    sync_parent(path).map_err(write_error)
}

fn write_temp(temp: &Path, lines: &[String], permissions: Option<Permissions>) -> io::Result<()> {
    match fs::remove_file(temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = create_private(temp)?;
    if let Some(permissions) = permissions {
        file.set_permissions(permissions)?;
    }
    let mut text = lines.join("\n");
    text.push('\n');
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(unix)]
fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(NEW_FILE_MODE)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// Makes the rename durable: a crash after it must not bring back the old
/// file.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    // Written by mosquitto 2.0.11's `mosquitto_passwd -b` (passwords
    // "secret" and "hunter2") and `mosquitto_passwd -H sha512 -b`
    // ("s3cr3t").
    const ALICE_7: &str = "alice:$7$101$PaoEc+VPleeDjYCu$1kKxFw86jrva2gM02RZ4m4M0CCVwlXvNqDZtAWuSWvLOoOZ8tskE83pzFOmvuohuKvWYqdxNT2YIYiUst/pPkg==";
    const BOB_7: &str = "bob:$7$101$kS+QYA5eyB0uNhj8$xYRCn4PdI8cR8O/MOFAv3VJFr2AtZ3T+Fdj9quoRjm0PqQb6/6RCCPkiT6AIbepAKyXkSSdnwWMODuMkFGkoYQ==";
    const CAROL_6: &str = "carol:$6$llBR1M4rgQP4K0P6$IjyheANuq5HiG2KKAzoNye7krKyRlH2vU79Pmw3mxVCXVDvLAta0Gmka3IImrjHAniScPKXHerEK1MVvCbxKuQ==";
    // argon2id from the reference `argon2` CLI with non-default parameters
    // (m=8 KiB, t=1, p=1), password
    // "pw", to show the line's parameters are the ones used.
    const DAVE_ARGON: &str =
        "dave:$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$GEKTZ6+jqojYxQOtOj7itFMizoftELlaFdxqX0hTq5U";
    // RFC 7677's credential: user "user", password "pencil".
    const USER_SCRAM: &str = "user:SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

    fn bad_line(text: &str) -> (usize, LineError) {
        match PasswordFile::parse(text) {
            Err(PasswdError::BadLine { line, reason, .. }) => (line, reason),
            other => panic!("expected a bad line, got {other:?}"),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tidemq-passwd-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn mosquitto_pbkdf2_lines_verify() {
        let file = PasswordFile::parse(&format!("{ALICE_7}\n{BOB_7}\n")).unwrap();
        assert_eq!(file.len(), 2);
        assert!(file.verify("alice", b"secret"));
        assert!(file.verify("bob", b"hunter2"));
        assert!(!file.verify("alice", b"hunter2"));
        assert!(!file.verify("alice", b"secre"));
        assert!(!file.verify("carol", b"secret"));
        assert!(file.scram_credentials("alice").is_none());
    }

    #[test]
    fn mosquitto_sha512_line_verifies() {
        let file = PasswordFile::parse(CAROL_6).unwrap();
        assert!(file.verify("carol", b"s3cr3t"));
        assert!(!file.verify("carol", b"s3cr3"));
    }

    #[test]
    fn argon2id_line_verifies_with_its_own_parameters() {
        let file = PasswordFile::parse(DAVE_ARGON).unwrap();
        assert!(file.verify("dave", b"pw"));
        assert!(!file.verify("dave", b"pw2"));
    }

    #[test]
    fn scram_line_verifies_and_yields_its_credential() {
        let file = PasswordFile::parse(USER_SCRAM).unwrap();
        assert!(file.verify("user", b"pencil"));
        assert!(!file.verify("user", b"pencil "));
        let credentials = file.scram_credentials("user").unwrap();
        assert_eq!(credentials.iterations, 4096);
        assert!(file.scram_credentials("nobody").is_none());
    }

    #[test]
    fn new_hashes_of_each_kind_verify() {
        for kind in [HashKind::Argon2id, HashKind::Scram] {
            let hash = hash_password("s3cret", kind).unwrap();
            let file = PasswordFile::parse(&format!("eve:{hash}")).unwrap();
            assert!(file.verify("eve", b"s3cret"), "{kind:?}");
            assert!(!file.verify("eve", b"s3cre"), "{kind:?}");
        }
        let argon = hash_password("x", HashKind::Argon2id).unwrap();
        assert!(argon.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    }

    #[test]
    fn blank_lines_and_comments_are_skipped() {
        let text = format!("# users\n\n  \n{ALICE_7}\r\n  # bob left\n{CAROL_6}\n");
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 2);
        assert!(file.verify("alice", b"secret"));
        assert!(PasswordFile::parse("").unwrap().is_empty());
    }

    #[test]
    fn truncated_or_malformed_entries_fail_the_load_naming_the_line() {
        let truncated = [
            &ALICE_7[..ALICE_7.len() - 3],
            "alice:$7$101$PaoEc+VPleeDjYCu",
            "alice:$7$$PaoEc+VPleeDjYCu$AAAA",
            "alice:$7$0$PaoEc+VPleeDjYCu$1kKxFw86jrva2gM02RZ4m4M0CCVwlXvNqDZtAWuSWvLOoOZ8tskE83pzFOmvuohuKvWYqdxNT2YIYiUst/pPkg==",
            &CAROL_6[..CAROL_6.len() - 6],
            "carol:$6$$IjyheANuq5HiG2KKAzoNye7krKyRlH2vU79Pmw3mxVCXVDvLAta0Gmka3IImrjHAniScPKXHerEK1MVvCbxKuQ==",
            &DAVE_ARGON[..DAVE_ARGON.len() - 44],
            "dave:$argon2id$v=19$m=8,t=0,p=1$c29tZXNhbHRzb21lc2FsdA$GEKTZ6+jqojYxQOtOj7itFMizoftELlaFdxqX0hTq5U",
            "dave:$argon2id$v=19$m=4294967295,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$GEKTZ6+jqojYxQOtOj7itFMizoftELlaFdxqX0hTq5U",
            &USER_SCRAM[..USER_SCRAM.len() - 5],
            "user:SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==",
        ];
        for entry in truncated {
            let (line, reason) = bad_line(&format!("# header\n{BOB_7}\n{entry}\n"));
            assert_eq!(line, 3, "{entry}");
            assert!(
                matches!(reason, LineError::Malformed { .. }),
                "{entry}: {reason:?}"
            );
        }
    }

    #[test]
    fn unknown_prefix_missing_colon_empty_user_and_duplicates_are_refused() {
        assert_eq!(bad_line("alice:$1$abc$def"), (1, LineError::UnknownKind));
        assert_eq!(bad_line("alice:secret"), (1, LineError::UnknownKind));
        assert_eq!(bad_line("\n$argon2i$v=19"), (2, LineError::MissingColon));
        assert_eq!(
            bad_line(&format!(":{}", &ALICE_7[6..])),
            (1, LineError::EmptyUser)
        );
        let dup = format!("{ALICE_7}\n\n{ALICE_7}");
        assert_eq!(bad_line(&dup), (3, LineError::DuplicateUser(1)));
    }

    #[test]
    fn load_errors_name_the_file_and_line_but_not_the_text() {
        let dir = temp_dir("load-error");
        let path = dir.join("pw");
        fs::write(&path, format!("{ALICE_7}\nbob:hunter2\n")).unwrap();
        let message = PasswordFile::load(&path).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        let missing = PasswordFile::load(&dir.join("none")).unwrap_err();
        assert!(matches!(missing, PasswdError::Read { .. }));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_user_is_refused_even_with_the_decoys_password() {
        let file = PasswordFile::parse(ALICE_7).unwrap();
        assert!(!file.verify("mallory", b"secret"));
        assert!(!PasswordFile::parse("").unwrap().verify("alice", b"secret"));
    }

    #[test]
    fn set_password_creates_updates_in_place_and_delete_removes() {
        let dir = temp_dir("edit");
        let path = dir.join("passwd");
        assert!(set_password(&path, "alice", "one", HashKind::Scram).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let before = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("# top\n{before}\n# mid\n{BOB_7}\n")).unwrap();

        assert!(!set_password(&path, "alice", "two", HashKind::Argon2id).unwrap());
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], "# top");
        assert!(lines[1].starts_with("alice:$argon2id$"));
        assert_eq!(&lines[2..], ["", "# mid", BOB_7]);
        let file = PasswordFile::load(&path).unwrap();
        assert!(file.verify("alice", b"two"));
        assert!(!file.verify("alice", b"one"));
        assert!(file.verify("bob", b"hunter2"));

        assert!(set_password(&path, "carol", "three", HashKind::Scram).unwrap());
        assert!(delete_user(&path, "alice").unwrap());
        assert!(!delete_user(&path, "alice").unwrap());
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&format!("# top\n\n# mid\n{BOB_7}\ncarol:SCRAM-SHA-256$")));
        let file = PasswordFile::load(&path).unwrap();
        assert_eq!(file.len(), 2);
        assert!(file.verify("carol", b"three"));
        assert!(delete_user(&dir.join("none"), "bob").is_err());
        let leftovers = fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no temp file left behind");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn update_keeps_an_existing_files_mode() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let dir = temp_dir("mode");
            let path = dir.join("passwd");
            fs::write(&path, format!("{BOB_7}\n")).unwrap();
            fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
            set_password(&path, "alice", "x", HashKind::Scram).unwrap();
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640);
            fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn bad_user_names_are_refused() {
        let dir = temp_dir("names");
        let path = dir.join("passwd");
        for name in ["", "a:b", "a\nb", "#a", " a", "a "] {
            let err = set_password(&path, name, "x", HashKind::Scram).unwrap_err();
            assert!(matches!(err, PasswdError::InvalidUser(_)), "{name:?}");
        }
        assert!(!path.exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn debug_shows_no_hashes() {
        let file = PasswordFile::parse(ALICE_7).unwrap();
        assert!(!format!("{file:?}").contains("PaoEc"));
    }
}
