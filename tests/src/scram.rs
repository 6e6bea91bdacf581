//! A SCRAM-SHA-256 client (RFC 5802, RFC 7677) for the end-to-end tests of
//! the broker's enhanced authentication. Written apart from the broker's
//! `security::scram` on purpose, from the RFC alone, so that a test passing
//! means two readings of the RFC agree. It owns one exchange's client state;
//! the tests carry its messages in CONNECT / AUTH packets.
//!
//! Order: [`ScramClient::client_first`], then [`ScramClient::client_final`]
//! with the server-first message, then [`ScramClient::verify_server_final`].

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Largest iteration count the client agrees to compute: a broken server
/// must not stall a test for minutes.
const MAX_ITERATIONS: u32 = 1_000_000;

/// Random bytes in the client nonce.
const NONCE_LEN: usize = 18;

/// One exchange, client side. No SASLprep: the password is used as bytes.
#[derive(Debug, Clone)]
pub struct ScramClient {
    user: String,
    password: String,
    nonce: String,
    client_first_bare: String,
    /// The signature the server must answer with, known after `client_final`.
    expected_server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    pub fn new(user: &str, password: &str) -> ScramClient {
        let nonce = B64.encode(rand::random::<[u8; NONCE_LEN]>());
        ScramClient::with_nonce(user, password, &nonce)
    }

    /// With a chosen client nonce, to replay the RFC's example exchange.
    pub fn with_nonce(user: &str, password: &str, nonce: &str) -> ScramClient {
        let escaped = user.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            user: user.to_owned(),
            password: password.to_owned(),
            nonce: nonce.to_owned(),
            client_first_bare: format!("n={escaped},r={nonce}"),
            expected_server_signature: None,
        }
    }

    /// The user name this client authenticates as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// `n,,n=USER,r=NONCE`: no channel binding, no authorization identity.
    pub fn client_first(&mut self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// The client-final message answering `server_first`.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let server_first =
            std::str::from_utf8(server_first).map_err(|_| "server-first is not UTF-8")?;
        let (nonce, salt, iterations) = parse_server_first(server_first)?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(format!("server nonce {nonce:?} does not extend ours"));
        }
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(self.password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key")?;
        let stored_key = Sha256::digest(&client_key);
        let server_key = hmac(&salted, b"Server Key")?;

        let without_proof = format!("c={},r={nonce}", B64.encode("n,,"));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac(&stored_key, auth_message.as_bytes())?;
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.expected_server_signature = Some(hmac(&server_key, auth_message.as_bytes())?);
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server's `v=SIGNATURE`: proves the server knew the
    /// credential, not just accepted us. `e=...` is reported as an error.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), String> {
        let expected = self
            .expected_server_signature
            .as_ref()
            .ok_or("verify_server_final before client_final")?;
        let text = std::str::from_utf8(server_final).map_err(|_| "server-final is not UTF-8")?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(format!("server refused: {error}"));
        }
        let signature = text
            .strip_prefix("v=")
            .ok_or_else(|| format!("server-final {text:?} has no v="))?;
        let signature = B64
            .decode(signature)
            .map_err(|e| format!("server signature is not base64: {e}"))?;
        if &signature != expected {
            return Err("server signature does not match".to_owned());
        }
        Ok(())
    }
}

/// `r=NONCE,s=SALT,i=ITERATIONS[,extensions]`.
fn parse_server_first(text: &str) -> Result<(&str, Vec<u8>, u32), String> {
    let mut attrs = text.split(',');
    let mut next = |key: &str| {
        attrs
            .next()
            .and_then(|a| a.strip_prefix(key))
            .ok_or_else(|| format!("server-first {text:?} lacks {key}"))
    };
    let nonce = next("r=")?;
    let salt = B64
        .decode(next("s=")?)
        .map_err(|e| format!("salt is not base64: {e}"))?;
    let iterations: u32 = next("i=")?
        .parse()
        .map_err(|e| format!("bad iteration count: {e}"))?;
    if !(1..=MAX_ITERATIONS).contains(&iterations) {
        return Err(format!("iteration count {iterations} out of range"));
    }
    Ok((nonce, salt, iterations))
}

fn hmac(key: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|e| e.to_string())?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// RFC 7677 section 3, from the client's side.
    #[test]
    fn rfc7677_example_from_the_client_side() {
        let mut client = ScramClient::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(client.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                             s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = client.client_final(server_first).unwrap();
        let expected = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                        p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(String::from_utf8(client_final).unwrap(), expected);
        let server_final = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        client.verify_server_final(server_final).unwrap();
        assert!(client.verify_server_final(b"v=AAAA").is_err());
        assert!(client.verify_server_final(b"e=invalid-proof").is_err());
    }

    #[test]
    fn server_first_that_does_not_extend_our_nonce_is_refused() {
        let mut client = ScramClient::with_nonce("user", "pencil", "abc");
        assert!(client.client_final(b"r=abc,s=AAAA,i=4096").is_err());
        assert!(client.client_final(b"r=xyzdef,s=AAAA,i=4096").is_err());
        assert!(client.client_final(b"r=abcdef,s=AAAA,i=0").is_err());
        assert!(client.client_final(b"r=abcdef,i=4096").is_err());
        assert!(client.verify_server_final(b"v=AAAA").is_err());
    }

    #[test]
    fn user_names_are_escaped() {
        let mut client = ScramClient::with_nonce("a,b=c", "pw", "n");
        assert_eq!(client.client_first(), b"n,,n=a=2Cb=3Dc,r=n");
    }
}
