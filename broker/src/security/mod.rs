//! Who may connect and what they may do: a listener's rules
//! ([`ListenerSecurity`]: anonymous access, the password file, the ACL
//! file, SCRAM-SHA-256), and the broker-wide guard on logins ([`Logins`]:
//! password hashing off the runtime's threads, delays after failures).
//!
//! | file     | owns                                                    |
//! |----------|---------------------------------------------------------|
//! | `passwd` | the mosquitto-format password file; `tidemq passwd`     |
//! | `acl`    | the mosquitto-format ACL file and its checks            |
//! | `scram`  | the SCRAM-SHA-256 exchange (RFC 5802, RFC 7677)         |
//!
//! The decision at CONNECT, in order:
//!
//! | CONNECT                                   | answer (3.1.1 / 5)    |
//! |-------------------------------------------|-----------------------|
//! | TLS identity wanted, no client certificate| 0x05 / 0x87           |
//! | no user name, anonymous not allowed       | 0x05 / 0x87           |
//! | user name, password file, no match        | 0x05 / 0x86 (delayed after failures) |
//! | Authentication Method SCRAM-SHA-256       | the AUTH exchange decides (delayed after failures) |
//! | otherwise                                 | accepted              |

pub mod acl;
pub mod passwd;
pub mod scram;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidemq_protocol::ReasonCode;
use tokio::sync::Semaphore;

use crate::auth::{AuthExchange, AuthStep, Authenticator};
use crate::config::{AuthSettings, ListenerConfig};
use acl::AclFile;
use passwd::PasswordFile;

/// The name MQTT 5 clients give as Authentication Method for SCRAM.
pub const SCRAM_METHOD: &str = "SCRAM-SHA-256";

/// Addresses remembered for their failed logins, at most; the oldest
/// failures are forgotten first beyond it.
const MAX_REMEMBERED_ADDRESSES: usize = 10_000;

/// Why a listener's files cannot be used; names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Passwd(#[from] passwd::PasswdError),
    #[error(transparent)]
    Acl(#[from] acl::AclError),
}

/// One listener's rules.
#[derive(Debug, Clone)]
pub struct ListenerSecurity {
    pub allow_anonymous: bool,
    /// The TLS client certificate's identity is the user name.
    pub use_identity: bool,
    pub passwords: Option<Arc<PasswordFile>>,
    pub acl: Option<Arc<AclFile>>,
    /// SCRAM-SHA-256 against `passwords`, when offered.
    pub scram: Option<Arc<dyn Authenticator>>,
    /// Who vouches for the user names here: the password file's path,
    /// `tls-identity`, or `unchecked` (see [`ListenerSecurity::principal`]).
    vouched_by: Arc<str>,
}

impl ListenerSecurity {
    /// Loads the files the listener names, or else the `[auth]` ones.
    pub fn load(listener: &ListenerConfig, auth: &AuthSettings) -> Result<Self, SecurityError> {
        let chosen = |own: &Option<std::path::PathBuf>, shared: &std::path::PathBuf| {
            own.clone()
                .or_else(|| (!shared.as_os_str().is_empty()).then(|| shared.clone()))
        };
        let password_path = chosen(&listener.password_file, &auth.password_file);
        let passwords = match &password_path {
            Some(path) => Some(Arc::new(PasswordFile::load(path)?)),
            None => None,
        };
        let use_identity = listener
            .tls
            .as_ref()
            .is_some_and(|tls| tls.use_identity_as_username);
        let vouched_by: Arc<str> = match (&password_path, use_identity) {
            (_, true) => Arc::from("tls-identity"),
            (Some(path), false) => Arc::from(format!("passwd:{}", path.display())),
            (None, false) => Arc::from("unchecked"),
        };
        let acl = match chosen(&listener.acl_file, &auth.acl_file) {
            Some(path) => Some(Arc::new(AclFile::load(&path)?)),
            None => None,
        };
        let scram = match (&passwords, auth.scram) {
            (Some(passwords), true) => {
                let scram: Arc<dyn Authenticator> = Arc::new(ScramAuthenticator {
                    passwords: passwords.clone(),
                });
                Some(scram)
            }
            _ => None,
        };
        Ok(ListenerSecurity {
            allow_anonymous: listener.allow_anonymous.unwrap_or(auth.allow_anonymous),
            use_identity,
            passwords,
            acl,
            scram,
            vouched_by,
        })
    }

    /// No files: anonymous access as given, no checks.
    pub fn open(allow_anonymous: bool) -> ListenerSecurity {
        ListenerSecurity {
            allow_anonymous,
            use_identity: false,
            passwords: None,
            acl: None,
            scram: None,
            vouched_by: Arc::from("unchecked"),
        }
    }

    /// A user name as this listener vouches for it, for the takeover rule:
    /// the same name checked against another password file, or not checked
    /// at all, is another principal.
    pub fn principal(&self, user: &str) -> Arc<str> {
        Arc::from(format!("{}\u{0}{user}", self.vouched_by))
    }
}

/// SCRAM-SHA-256 as an MQTT 5 enhanced-authentication method, against the
/// password file's SCRAM entries.
#[derive(Debug)]
pub struct ScramAuthenticator {
    passwords: Arc<PasswordFile>,
}

impl Authenticator for ScramAuthenticator {
    fn method(&self) -> &str {
        SCRAM_METHOD
    }

    fn start(&self, _client_id: &str, username: Option<&str>) -> Box<dyn AuthExchange> {
        let passwords = self.passwords.clone();
        Box::new(ScramExchange {
            server: scram::ScramServer::new(move |user: &str| passwords.scram_credentials(user)),
            username: username.map(str::to_owned),
        })
    }
}

/// One SCRAM exchange. The CONNECT's user name must be the one SCRAM
/// authenticates, so that the ACL and takeover rules apply to it.
struct ScramExchange {
    server: scram::ScramServer,
    username: Option<String>,
}

impl std::fmt::Debug for ScramExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramExchange")
            .field("username", &self.username)
            .finish()
    }
}

impl AuthExchange for ScramExchange {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        let Some(username) = &self.username else {
            // No user name in CONNECT: nothing for the ACL to go by.
            return AuthStep::Failure(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        };
        let data = data.unwrap_or_default();
        if let Some(user) = scram::client_first_user(data) {
            if user != *username {
                return AuthStep::Failure(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
            }
        }
        match self.server.step(data) {
            scram::ScramStep::Continue(reply) => AuthStep::Continue(Bytes::from(reply)),
            scram::ScramStep::Success(last) => AuthStep::Success(Some(Bytes::from(last))),
            scram::ScramStep::Failure(scram::ScramFailure::BadUserOrPassword) => {
                AuthStep::Failure(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
            }
            scram::ScramStep::Failure(scram::ScramFailure::Malformed) => {
                AuthStep::Failure(ReasonCode::NOT_AUTHORIZED)
            }
        }
    }
}

/// Failed logins of one address.
#[derive(Debug, Clone)]
struct Failures {
    count: u32,
    last: Instant,
    /// When the next delayed answer to this address may go out: answers
    /// queue behind each other, so CONNECTs sent in parallel wait in turn.
    next_answer: Instant,
    /// The user name of the last failure: only a success as that user
    /// clears the address, so a valid account of one's own cannot be used
    /// to reset the delay between guesses at others.
    user: Option<Box<str>>,
}

/// The broker-wide guard on password checks.
#[derive(Debug)]
pub struct Logins {
    /// `auth.max_concurrent_hashes`: hashes run on blocking threads, this
    /// many at once, so a login storm queues here instead of spawning a
    /// thread (and argon2's ~20 MiB) per CONNECT.
    hashing: Semaphore,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    base_delay: Duration,
    max_delay: Duration,
}

impl Logins {
    pub fn new(auth: &AuthSettings) -> Logins {
        Logins {
            hashing: Semaphore::new(auth.max_concurrent_hashes),
            failures: Mutex::new(HashMap::new()),
            base_delay: Duration::from_millis(auth.failed_login_delay_ms),
            max_delay: Duration::from_millis(auth.failed_login_max_delay_ms),
        }
    }

    /// Checks a password on a blocking thread, at most
    /// `max_concurrent_hashes` at once.
    pub async fn verify(&self, passwords: &Arc<PasswordFile>, user: &str, password: &[u8]) -> bool {
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        let passwords = passwords.clone();
        let user = user.to_owned();
        let password = password.to_vec();
        tokio::task::spawn_blocking(move || passwords.verify(&user, &password))
            .await
            .unwrap_or(false)
    }

    /// The spacing of this address's login answers: the base delay
    /// doubled per recent failure, capped. Failures older than four times
    /// the cap are forgotten.
    pub fn delay_for(&self, addr: IpAddr) -> Option<Duration> {
        let failures = crate::registry::lock(&self.failures);
        self.spacing(failures.get(&addr)?)
    }

    fn spacing(&self, failures: &Failures) -> Option<Duration> {
        if failures.last.elapsed() > self.max_delay.max(self.base_delay) * 4 {
            return None;
        }
        let doubled = self
            .base_delay
            .saturating_mul(1 << failures.count.saturating_sub(1).min(16));
        Some(doubled.min(self.max_delay))
    }

    /// How long this login's answer waits: its place in the address's
    /// queue of answers, each `delay_for` after the one before.
    pub fn reserve(&self, addr: IpAddr) -> Option<Duration> {
        let mut failures = crate::registry::lock(&self.failures);
        let entry = failures.get_mut(&addr)?;
        let spacing = self.spacing(entry)?;
        let now = Instant::now();
        entry.next_answer = entry.next_answer.max(now) + spacing;
        Some(entry.next_answer - now)
    }

    pub fn failed(&self, addr: IpAddr, user: Option<&str>) {
        let mut failures = crate::registry::lock(&self.failures);
        if failures.len() >= MAX_REMEMBERED_ADDRESSES && !failures.contains_key(&addr) {
            let oldest = failures.iter().min_by_key(|(_, f)| f.last).map(|(a, _)| *a);
            if let Some(oldest) = oldest {
                failures.remove(&oldest);
            }
        }
        let now = Instant::now();
        let entry = failures.entry(addr).or_insert(Failures {
            count: 0,
            last: now,
            next_answer: now,
            user: None,
        });
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        entry.user = user.map(Box::from);
    }

    /// A login as `user` succeeded: the address's failures are cleared
    /// when they were that user's.
    pub fn succeeded(&self, addr: IpAddr, user: Option<&str>) {
        let mut failures = crate::registry::lock(&self.failures);
        if failures
            .get(&addr)
            .is_some_and(|f| f.user.as_deref() == user)
        {
            failures.remove(&addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logins() -> Logins {
        let mut auth = crate::Settings::defaults().unwrap().auth;
        auth.failed_login_delay_ms = 100;
        auth.failed_login_max_delay_ms = 350;
        Logins::new(&auth)
    }

    #[test]
    fn failed_logins_double_the_delay_up_to_the_cap_and_success_clears_it() {
        let logins = logins();
        let addr = IpAddr::from([10, 0, 0, 1]);
        assert_eq!(logins.delay_for(addr), None);
        logins.failed(addr, Some("alice"));
        assert_eq!(logins.delay_for(addr), Some(Duration::from_millis(100)));
        logins.failed(addr, Some("alice"));
        assert_eq!(logins.delay_for(addr), Some(Duration::from_millis(200)));
        logins.failed(addr, Some("alice"));
        assert_eq!(logins.delay_for(addr), Some(Duration::from_millis(350)));
        assert_eq!(logins.delay_for(IpAddr::from([10, 0, 0, 2])), None);
        // Another user's success does not clear alice's failures.
        logins.succeeded(addr, Some("mallory"));
        assert_eq!(logins.delay_for(addr), Some(Duration::from_millis(350)));
        logins.succeeded(addr, Some("alice"));
        assert_eq!(logins.delay_for(addr), None);
    }

    #[test]
    fn parallel_answers_to_one_address_queue_behind_each_other() {
        let logins = logins();
        let addr = IpAddr::from([10, 0, 0, 3]);
        assert_eq!(logins.reserve(addr), None);
        logins.failed(addr, Some("alice"));
        let waits: Vec<Duration> = (0..3).filter_map(|_| logins.reserve(addr)).collect();
        assert_eq!(waits.len(), 3);
        // Each answer waits one spacing (100 ms) more than the one before.
        assert!(waits[0] <= Duration::from_millis(100), "{waits:?}");
        assert!(waits[1] > Duration::from_millis(150), "{waits:?}");
        assert!(waits[2] > Duration::from_millis(250), "{waits:?}");
    }
}
