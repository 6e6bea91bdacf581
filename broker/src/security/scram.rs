//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as a pure state
//! machine: it owns one exchange's state and the credential format, and
//! nothing else. It knows no MQTT types and does no I/O; the broker's
//! `Authenticator` wraps a [`ScramServer`] per exchange, feeds it the
//! Authentication Data of CONNECT and AUTH packets on the connection's task,
//! and maps [`ScramStep`] to AUTH / CONNACK answers. Each step costs a few
//! HMACs, never a PBKDF2, so it may run on the async task.
//!
//! | state              | input                 | answer                           | next         |
//! |--------------------|-----------------------|----------------------------------|--------------|
//! | `AwaitClientFirst` | `n,,n=USER,r=CNONCE`  | `Continue(r=..,s=SALT,i=ITER)`   | `AwaitClientFinal` |
//! | `AwaitClientFinal` | `c=biws,r=NONCE,p=..` | `Success(v=SIG)` or `Failure`    | `Done`       |
//! | any                | malformed or too long | `Failure(Malformed)`             | `Done`       |
//! | `Done`             | anything              | `Failure(Malformed)`             | `Done`       |
//!
//! A user name that is unknown (or has no SCRAM credential) is not refused
//! at the first step: it gets a salt derived from the name and a
//! per-process secret, so the server-first message looks the same for
//! every name and names cannot be probed; the exchange fails at the final
//! step exactly as a wrong password does.
//!
//! Passwords are taken as raw bytes: SASLprep (RFC 4013) is not applied,
//! which is the same for the ASCII passwords clients send in practice.

use std::fmt;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The SASL mechanism name, and the MQTT 5 Authentication Method.
pub const METHOD: &str = "SCRAM-SHA-256";

/// PBKDF2 iterations for new credentials (RFC 7677 asks for at least 4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Largest iteration count accepted from a credential line: a typo must not
/// make one login cost minutes of CPU.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// Largest client message, in bytes. Real ones are under 200 bytes; the cap
/// bounds what one exchange can make the server parse and hash.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Random bytes in the server's half of the nonce (base64: 24 characters).
const SERVER_NONCE_LEN: usize = 18;

/// Salt length handed to unknown users, the length `tidemq passwd` writes.
const FAKE_SALT_LEN: usize = 16;

/// Largest salt accepted from a credential line, in bytes.
const MAX_SALT_LEN: usize = 64;

/// Length of StoredKey, ServerKey, proofs and signatures: one SHA-256.
const KEY_LEN: usize = 32;

/// Finds the credential of a user name given in client-first.
type CredentialLookup = Box<dyn Fn(&str) -> Option<ScramCredentials> + Send + Sync>;

/// What the server keeps for a user: enough to check a proof and sign the
/// answer, never the password. `Debug` shows no key.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; KEY_LEN],
    pub server_key: [u8; KEY_LEN],
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("salt_len", &self.salt.len())
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredentials {
    /// Derives the credential of `password` (RFC 5802 section 3).
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ScramCredentials {
        let mut salted = [0u8; KEY_LEN];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        ScramCredentials {
            salt: salt.to_vec(),
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
        }
    }

    /// Whether `password` derives this credential's StoredKey; compared in
    /// constant time. Costs one PBKDF2 of `iterations` rounds.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let derived = ScramCredentials::derive(password, &self.salt, self.iterations);
        derived
            .stored_key
            .as_slice()
            .ct_eq(self.stored_key.as_slice())
            .into()
    }

    /// PostgreSQL's form: `SCRAM-SHA-256$ITER:SALT$STOREDKEY:SERVERKEY`.
    pub fn to_entry(&self) -> String {
        format!(
            "{METHOD}${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// Parses [`Self::to_entry`]'s form; `None` when anything is off
    /// (the caller names the line, this never echoes the text).
    pub fn parse_entry(s: &str) -> Option<ScramCredentials> {
        let rest = s.strip_prefix(METHOD)?.strip_prefix('$')?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok()?;
        let salt = B64.decode(salt).ok()?;
        let valid =
            (1..=MAX_ITERATIONS).contains(&iterations) && (1..=MAX_SALT_LEN).contains(&salt.len());
        valid.then_some(())?;
        Some(ScramCredentials {
            salt,
            iterations,
            stored_key: decode_key(stored_key)?,
            server_key: decode_key(server_key)?,
        })
    }
}

/// The server's answer to one client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramStep {
    /// Send this (server-first) and wait for the client's next message.
    Continue(Vec<u8>),
    /// Authenticated; send this server-final (`v=SIGNATURE`) to the client.
    Success(Vec<u8>),
    /// The exchange is over and refused.
    Failure(ScramFailure),
}

/// Why an exchange was refused. The client is told no more than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramFailure {
    /// Wrong proof, unknown user, or a user with no SCRAM credential.
    BadUserOrPassword,
    /// A message out of order, too long, not SCRAM, or using a feature this
    /// server does not offer (channel binding, authzid, `m=` extensions).
    Malformed,
}

impl ScramFailure {
    /// The MQTT 5 reason code the broker answers with: 0x86 (Bad User Name
    /// or Password) for a failed proof, 0x87 (Not authorized) for a broken
    /// exchange, which is no statement about the credentials.
    pub fn reason_code(self) -> u8 {
        match self {
            ScramFailure::BadUserOrPassword => 0x86,
            ScramFailure::Malformed => 0x87,
        }
    }
}

/// One SCRAM-SHA-256 exchange, server side.
pub struct ScramServer {
    lookup: CredentialLookup,
    server_nonce: String,
    state: State,
}

enum State {
    AwaitClientFirst,
    AwaitClientFinal(Box<Pending>),
    Done,
}

/// What the final step needs from the first.
struct Pending {
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    credentials: ScramCredentials,
    /// False for the made-up credential of an unknown user: the proof is
    /// checked all the same, then refused whatever it says.
    known: bool,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::AwaitClientFirst => "await-client-first",
            State::AwaitClientFinal(_) => "await-client-final",
            State::Done => "done",
        };
        f.debug_struct("ScramServer")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// A new exchange; `lookup` finds the credential of the user named in
    /// client-first (called once, on the first step).
    pub fn new<F>(lookup: F) -> ScramServer
    where
        F: Fn(&str) -> Option<ScramCredentials> + Send + Sync + 'static,
    {
        let nonce = B64.encode(rand::random::<[u8; SERVER_NONCE_LEN]>());
        ScramServer::with_server_nonce(lookup, nonce)
    }

    fn with_server_nonce<F>(lookup: F, server_nonce: String) -> ScramServer
    where
        F: Fn(&str) -> Option<ScramCredentials> + Send + Sync + 'static,
    {
        ScramServer {
            lookup: Box::new(lookup),
            server_nonce,
            state: State::AwaitClientFirst,
        }
    }

    /// Handles the client's next message. After `Success` or `Failure`
    /// every further call fails as `Malformed`.
    pub fn step(&mut self, data: &[u8]) -> ScramStep {
        let state = std::mem::replace(&mut self.state, State::Done);
        let result = match state {
            State::AwaitClientFirst => self.client_first(data),
            State::AwaitClientFinal(pending) => client_final(&pending, data),
            State::Done => Err(Refusal::Malformed("message after the end of the exchange")),
        };
        match result {
            Ok(Answer::Continue(pending, server_first)) => {
                self.state = State::AwaitClientFinal(pending);
                ScramStep::Continue(server_first.into_bytes())
            }
            Ok(Answer::Success(server_final)) => ScramStep::Success(server_final.into_bytes()),
            Err(refusal) => {
                tracing::debug!(reason = refusal.describe(), "SCRAM exchange refused");
                ScramStep::Failure(refusal.failure())
            }
        }
    }

    fn client_first(&self, data: &[u8]) -> Result<Answer, Refusal> {
        let msg = message_text(data)?;
        let first = parse_client_first(msg)?;
        let (credentials, known) = match (self.lookup)(&first.user) {
            Some(credentials) => (credentials, true),
            None => (fake_credentials(&first.user), false),
        };
        let nonce = format!("{}{}", first.client_nonce, self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credentials.salt),
            credentials.iterations
        );
        let pending = Pending {
            gs2_header: first.gs2_header,
            client_first_bare: first.bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
            credentials,
            known,
        };
        Ok(Answer::Continue(Box::new(pending), server_first))
    }
}

/// The user name `data` names if it is a well-formed client-first message,
/// decoded; `None` for anything else (a client-final, garbage). Lets the
/// broker check that SCRAM authenticates the CONNECT's user name.
pub fn client_first_user(data: &[u8]) -> Option<String> {
    let msg = message_text(data).ok()?;
    parse_client_first(msg).ok().map(|first| first.user)
}

enum Answer {
    Continue(Box<Pending>, String),
    Success(String),
}

/// Why a step failed, in more detail than the client is told (for the log).
enum Refusal {
    Malformed(&'static str),
    BadProof,
}

impl Refusal {
    fn describe(&self) -> &'static str {
        match self {
            Refusal::Malformed(why) => why,
            Refusal::BadProof => "bad user name or password",
        }
    }

    fn failure(&self) -> ScramFailure {
        match self {
            Refusal::Malformed(_) => ScramFailure::Malformed,
            Refusal::BadProof => ScramFailure::BadUserOrPassword,
        }
    }
}

struct ClientFirst<'a> {
    gs2_header: String,
    bare: &'a str,
    user: String,
    client_nonce: &'a str,
}

fn message_text(data: &[u8]) -> Result<&str, Refusal> {
    if data.len() > MAX_MESSAGE_LEN {
        return Err(Refusal::Malformed("message longer than MAX_MESSAGE_LEN"));
    }
    std::str::from_utf8(data).map_err(|_| Refusal::Malformed("message is not UTF-8"))
}

/// `gs2-header client-first-bare` (RFC 5802 section 7).
fn parse_client_first(msg: &str) -> Result<ClientFirst<'_>, Refusal> {
    let (flag, rest) = msg
        .split_once(',')
        .ok_or(Refusal::Malformed("client-first has no gs2 header"))?;
    if flag != "n" && flag != "y" {
        return Err(Refusal::Malformed("channel binding is not supported"));
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(Refusal::Malformed("client-first has no gs2 header"))?;
    if !authzid.is_empty() {
        return Err(Refusal::Malformed(
            "authorization identity is not supported",
        ));
    }
    let mut attrs = bare.split(',');
    let user = attrs.next().unwrap_or_default();
    if user.starts_with("m=") {
        return Err(Refusal::Malformed("mandatory extension is not supported"));
    }
    let user = user
        .strip_prefix("n=")
        .ok_or(Refusal::Malformed("client-first has no user name"))?;
    let client_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(Refusal::Malformed("client-first has no nonce"))?;
    if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(Refusal::Malformed("client nonce is not printable"));
    }
    Ok(ClientFirst {
        gs2_header: format!("{flag},,"),
        bare,
        user: decode_saslname(user)?,
        client_nonce,
    })
}

/// Undoes RFC 5802's escaping of `,` as `=2C` and `=` as `=3D`; any other
/// `=` is an error, as is an empty name.
fn decode_saslname(name: &str) -> Result<String, Refusal> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some((plain, escaped)) = rest.split_once('=') {
        out.push_str(plain);
        let (ch, tail) = if let Some(tail) = escaped.strip_prefix("2C") {
            (',', tail)
        } else if let Some(tail) = escaped.strip_prefix("3D") {
            ('=', tail)
        } else {
            return Err(Refusal::Malformed("bad '=' escape in user name"));
        };
        out.push(ch);
        rest = tail;
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(Refusal::Malformed("empty user name"));
    }
    Ok(out)
}

/// `c=CBIND,r=NONCE[,ext...],p=PROOF` (RFC 5802 section 7), checked
/// against what the first step sent.
fn client_final(pending: &Pending, data: &[u8]) -> Result<Answer, Refusal> {
    let msg = message_text(data)?;
    let (without_proof, proof) = msg
        .rsplit_once(",p=")
        .ok_or(Refusal::Malformed("client-final has no proof"))?;
    let mut attrs = without_proof.split(',');
    let cbind = attrs
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or(Refusal::Malformed("client-final has no channel binding"))?;
    if cbind != B64.encode(&pending.gs2_header) {
        return Err(Refusal::Malformed(
            "channel binding differs from the gs2 header",
        ));
    }
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(Refusal::Malformed("client-final has no nonce"))?;
    if nonce != pending.nonce {
        return Err(Refusal::Malformed(
            "client-final nonce differs from server-first",
        ));
    }
    let proof = decode_key(proof).ok_or(Refusal::Malformed("proof is not 32 bytes of base64"))?;
    let auth_message = [
        pending.client_first_bare.as_bytes(),
        b",",
        pending.server_first.as_bytes(),
        b",",
        without_proof.as_bytes(),
    ];
    let creds = &pending.credentials;
    let signature = hmac_sha256(&creds.stored_key, &auth_message);
    let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
    let computed = Sha256::digest(&client_key);
    let matches: bool = computed
        .as_slice()
        .ct_eq(creds.stored_key.as_slice())
        .into();
    if !(matches && pending.known) {
        return Err(Refusal::BadProof);
    }
    let server_signature = hmac_sha256(&creds.server_key, &auth_message);
    Ok(Answer::Success(format!(
        "v={}",
        B64.encode(server_signature)
    )))
}

fn decode_key(b64: &str) -> Option<[u8; KEY_LEN]> {
    B64.decode(b64).ok()?.try_into().ok()
}

/// A credential for a user the lookup did not find: the same for the same
/// name within this process, unrelated to any password.
fn fake_credentials(user: &str) -> ScramCredentials {
    let secret = fake_secret();
    let mut salt = hmac_sha256(secret, &[b"salt\0", user.as_bytes()]).to_vec();
    salt.truncate(FAKE_SALT_LEN);
    ScramCredentials {
        salt,
        iterations: DEFAULT_ITERATIONS,
        stored_key: hmac_sha256(secret, &[b"stored\0", user.as_bytes()]),
        server_key: hmac_sha256(secret, &[b"server\0", user.as_bytes()]),
    }
}

/// Drawn once per process, so fake salts are stable across attempts (a
/// salt that changed per attempt would tell the name is unknown).
fn fake_secret() -> &'static [u8; KEY_LEN] {
    static SECRET: OnceLock<[u8; KEY_LEN]> = OnceLock::new();
    SECRET.get_or_init(rand::random)
}

/// HMAC-SHA-256 of the concatenated `parts`.
fn hmac_sha256(key: &[u8; KEY_LEN], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    // RFC 2104 pads a key shorter than the 64-byte block with zeros, so this
    // padded key gives the same HMAC through the fixed-size constructor,
    // which (unlike `new_from_slice`) has no error case to handle.
    let mut block = [0u8; 64];
    block[..KEY_LEN].copy_from_slice(key);
    let mut mac = <Hmac<Sha256> as Mac>::new(&block.into());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    // RFC 7677 section 3: user "user", password "pencil".
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    // Computed independently (Python hashlib/hmac) from the RFC's inputs.
    const RFC_ENTRY: &str = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
                             WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
                             wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

    fn rfc_credentials() -> ScramCredentials {
        ScramCredentials::parse_entry(RFC_ENTRY).unwrap()
    }

    fn rfc_server() -> ScramServer {
        let lookup = |user: &str| (user == "user").then(rfc_credentials);
        ScramServer::with_server_nonce(lookup, RFC_SERVER_NONCE.to_owned())
    }

    fn continue_text(step: ScramStep) -> String {
        match step {
            ScramStep::Continue(d) => String::from_utf8(d).unwrap(),
            other => panic!("expected Continue, got {other:?}"),
        }
    }

    #[test]
    fn derive_matches_rfc7677_keys() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let derived = ScramCredentials::derive(b"pencil", &salt, 4096);
        assert_eq!(derived, rfc_credentials());
        assert_eq!(derived.to_entry(), RFC_ENTRY);
        assert!(derived.verify_password(b"pencil"));
        assert!(!derived.verify_password(b"pencil2"));
    }

    #[test]
    fn rfc7677_exchange_reproduced_exactly() {
        let mut server = rfc_server();
        let first = continue_text(server.step(RFC_CLIENT_FIRST.as_bytes()));
        assert_eq!(first, RFC_SERVER_FIRST);
        let last = server.step(RFC_CLIENT_FINAL.as_bytes());
        assert_eq!(
            last,
            ScramStep::Success(RFC_SERVER_FINAL.as_bytes().to_vec())
        );
        // A step after the end is refused.
        let after = server.step(RFC_CLIENT_FINAL.as_bytes());
        assert_eq!(after, ScramStep::Failure(ScramFailure::Malformed));
    }

    #[test]
    fn wrong_proof_is_bad_user_or_password() {
        let mut server = rfc_server();
        continue_text(server.step(RFC_CLIENT_FIRST.as_bytes()));
        let forged = RFC_CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
        let step = server.step(forged.as_bytes());
        assert_eq!(step, ScramStep::Failure(ScramFailure::BadUserOrPassword));
    }

    #[test]
    fn unknown_user_fails_only_at_the_final_step() {
        let mut server = rfc_server();
        let first = continue_text(server.step(b"n,,n=mallory,r=abc"));
        assert!(first.starts_with(&format!("r=abc{RFC_SERVER_NONCE},s=")));
        assert!(first.ends_with(",i=4096"));
        // The same made-up salt on every attempt, a different one per name.
        let again = continue_text(rfc_server().step(b"n,,n=mallory,r=abc"));
        assert_eq!(first, again);
        let other = continue_text(rfc_server().step(b"n,,n=eve,r=abc"));
        assert_ne!(first, other);
        let fin = format!("c=biws,r=abc{RFC_SERVER_NONCE},p={}", B64.encode([7u8; 32]));
        let step = server.step(fin.as_bytes());
        assert_eq!(step, ScramStep::Failure(ScramFailure::BadUserOrPassword));
    }

    #[test]
    fn escaped_user_names_are_decoded() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").ok().unwrap(), "a,b=c");
        assert!(decode_saslname("a=2").is_err());
        assert!(decode_saslname("a=41").is_err());
        assert!(decode_saslname("").is_err());
    }

    #[test]
    fn escaped_user_name_reaches_the_lookup() {
        let lookup = |user: &str| (user == "a,b").then(rfc_credentials);
        let mut server = ScramServer::with_server_nonce(lookup, "S".to_owned());
        let first = continue_text(server.step(b"n,,n=a=2Cb,r=x"));
        assert_eq!(first, "r=xS,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
    }

    fn first_step_fails(msg: &[u8]) {
        let step = rfc_server().step(msg);
        let shown = String::from_utf8_lossy(msg);
        assert_eq!(step, ScramStep::Failure(ScramFailure::Malformed), "{shown}");
    }

    #[test]
    fn malformed_client_first_is_refused() {
        first_step_fails(b"");
        first_step_fails(b"n=user,r=abc");
        first_step_fails(b"p=tls-unique,,n=user,r=abc");
        first_step_fails(b"n,a=admin,n=user,r=abc");
        first_step_fails(b"n,,m=ext,n=user,r=abc");
        first_step_fails(b"n,,n=,r=abc");
        first_step_fails(b"n,,n=us=er,r=abc");
        first_step_fails(b"n,,n=user");
        first_step_fails(b"n,,n=user,r=");
        first_step_fails(b"n,,n=user,r=a b");
        first_step_fails(b"n,,r=abc,n=user");
        first_step_fails(b"n,,n=\xff,r=abc");
        let long = format!("n,,n=user,r={}", "a".repeat(MAX_MESSAGE_LEN));
        first_step_fails(long.as_bytes());
    }

    #[test]
    fn client_first_user_names_the_user_of_client_first_only() {
        assert_eq!(client_first_user(b"n,,n=a=2Cb,r=x").as_deref(), Some("a,b"));
        assert_eq!(client_first_user(b"y,,n=user,r=x").as_deref(), Some("user"));
        assert_eq!(client_first_user(RFC_CLIENT_FINAL.as_bytes()), None);
        assert_eq!(client_first_user(b"n,,n=us=er,r=x"), None);
        assert_eq!(client_first_user(b""), None);
    }

    #[test]
    fn y_flag_is_accepted_and_bound() {
        let mut server = rfc_server();
        continue_text(server.step(b"y,,n=user,r=rOprNGfwEbeRWgbNEkqO"));
        // The proof is for "n,,", and c= must now be base64("y,,").
        let step = server.step(RFC_CLIENT_FINAL.as_bytes());
        assert_eq!(step, ScramStep::Failure(ScramFailure::Malformed));
    }

    fn final_step_fails(msg: &str) {
        let mut server = rfc_server();
        continue_text(server.step(RFC_CLIENT_FIRST.as_bytes()));
        let step = server.step(msg.as_bytes());
        assert_eq!(step, ScramStep::Failure(ScramFailure::Malformed), "{msg}");
    }

    #[test]
    fn malformed_client_final_is_refused() {
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        final_step_fails("");
        final_step_fails(&format!("c=biws,r={nonce}"));
        final_step_fails(&format!("c=eSws,r={nonce},p={proof}"));
        final_step_fails(&format!("r={nonce},c=biws,p={proof}"));
        final_step_fails(&format!("c=biws,r={nonce}X,p={proof}"));
        final_step_fails(&format!("c=biws,r=rOprNGfwEbeRWgbNEkqO,p={proof}"));
        final_step_fails(&format!("c=biws,r={nonce},p=dHzb"));
        final_step_fails(&format!("c=biws,r={nonce},p={proof},x=1"));
        final_step_fails(RFC_CLIENT_FIRST);
    }

    #[test]
    fn final_before_first_is_refused() {
        first_step_fails(RFC_CLIENT_FINAL.as_bytes());
    }

    #[test]
    fn credential_entries_round_trip_and_reject_garbage() {
        let creds = rfc_credentials();
        assert_eq!(
            ScramCredentials::parse_entry(&creds.to_entry()),
            Some(creds)
        );
        let bad = [
            "",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-1$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AA==:AA==",
            "SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
            "SCRAM-SHA-256$4096:$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4q=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=",
            &RFC_ENTRY[..RFC_ENTRY.len() - 4],
        ];
        for entry in bad {
            assert_eq!(ScramCredentials::parse_entry(entry), None, "{entry}");
        }
    }

    #[test]
    fn padded_key_hmac_equals_rfc2104_hmac() {
        let key = [0x5au8; KEY_LEN];
        let mut reference = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        reference.update(b"some message");
        let expected: [u8; KEY_LEN] = reference.finalize().into_bytes().into();
        assert_eq!(hmac_sha256(&key, &[b"some ", b"message"]), expected);
    }

    #[test]
    fn debug_shows_no_keys() {
        let shown = format!("{:?} {:?}", rfc_credentials(), rfc_server());
        assert!(!shown.contains("stored_key") && !shown.contains("server_key"));
    }
}
