//! TLS to a bridge's remote: a bridge's `tls` table (mosquitto's
//! `bridge_cafile`, `bridge_certfile`, `bridge_keyfile`, `bridge_insecure`)
//! loaded into the client configuration `rumqttc` connects with. The files
//! are read once, when the bridge is prepared (at start, or by a reload that
//! adds or changes it); one that does not load is a [`BridgeTlsError`]
//! naming it. Pure set-up: no socket, no task.
//!
//! `rumqttc` 0.24 speaks rustls 0.22 (its re-exported `tokio_rustls`), not
//! the 0.23 of our listeners (`crate::transport::tls`): the configuration
//! types here are that older crate's. Both share `rustls-pki-types`, so the
//! PEM files are read by the listeners' own loaders. The server certificate is checked by
//! [`Verifier`]: webpki's chain check against `ca_file`, then the name:
//!
//! | `server_name` | `insecure` | the certificate must name                  |
//! |---------------|------------|--------------------------------------------|
//! | absent        | false      | the host of `address` (DNS name or IP)      |
//! | set           | false      | `server_name`                               |
//! | either        | true       | anything: only the chain is checked         |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    client::WebPkiServerVerifier,
    pki_types::{CertificateDer, ServerName, UnixTime},
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rumqttc::TlsConfiguration;

use crate::config::BridgeTls;
use crate::transport::tls::{load_certs, load_key, TlsError};

/// Why a bridge's TLS files cannot be used; names the bridge and the file.
#[derive(Debug, thiserror::Error)]
pub enum BridgeTlsError {
    /// A file that does not read as PEM (the error names it).
    #[error("bridge {bridge:?}: {error}")]
    File { bridge: String, error: TlsError },
    /// A file that reads but that rustls refuses, or a bad `server_name`.
    #[error("bridge {bridge:?}: tls: {path}: {problem}")]
    Rejected {
        bridge: String,
        path: PathBuf,
        problem: String,
    },
}

/// Loads `tls`'s files into the client configuration of bridge `bridge`.
pub(crate) fn client_config(
    bridge: &str,
    tls: &BridgeTls,
) -> Result<TlsConfiguration, BridgeTlsError> {
    let fail = |path: &Path, problem: String| BridgeTlsError::Rejected {
        bridge: bridge.to_owned(),
        path: path.to_path_buf(),
        problem,
    };
    let unreadable = |error| BridgeTlsError::File {
        bridge: bridge.to_owned(),
        error,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in load_certs(&tls.ca_file).map_err(unreadable)? {
        roots
            .add(cert)
            .map_err(|error| fail(&tls.ca_file, error.to_string()))?;
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|error| fail(&tls.ca_file, error.to_string()))?;
    let name = match &tls.server_name {
        Some(name) => Some(
            ServerName::try_from(name.clone())
                .map_err(|error| fail(Path::new("(server_name)"), error.to_string()))?,
        ),
        None => None,
    };
    let verifier = Verifier {
        webpki,
        name,
        insecure: tls.insecure,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| fail(&tls.ca_file, error.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let certs = load_certs(cert_file).map_err(unreadable)?;
            let key = load_key(key_file).map_err(unreadable)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|error| fail(key_file, error.to_string()))?
        }
        // Validation lets only both or neither through.
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// webpki's check of the server certificate, against `server_name` when
/// one is set, and without the name when `insecure` (see the module table).
#[derive(Debug)]
struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    name: Option<ServerName<'static>>,
    insecure: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().unwrap_or(server_name);
        let verified =
            self.webpki
                .verify_server_cert(end_entity, intermediates, name, ocsp_response, now);
        match verified {
            // webpki checks the chain before the name: this error means the
            // chain is good.
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
                if self.insecure =>
            {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    /// A CA and a server certificate it signed for `localhost`.
    fn pki() -> (rcgen::Certificate, CertificateDer<'static>) {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        (ca, server.der().clone())
    }

    fn verifier(ca: &rcgen::Certificate, name: Option<&str>, insecure: bool) -> Verifier {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Verifier {
            webpki: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap(),
            name: name.map(|name| ServerName::try_from(name.to_owned()).unwrap()),
            insecure,
        }
    }

    fn verify(verifier: &Verifier, cert: &CertificateDer<'_>, host: &str) -> bool {
        let host = ServerName::try_from(host.to_owned()).unwrap();
        verifier
            .verify_server_cert(cert, &[], &host, &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn the_certificate_must_name_the_host_or_server_name() {
        let (ca, cert) = pki();
        assert!(verify(&verifier(&ca, None, false), &cert, "localhost"));
        assert!(!verify(&verifier(&ca, None, false), &cert, "127.0.0.1"));
        // server_name replaces the host of `address`.
        assert!(verify(
            &verifier(&ca, Some("localhost"), false),
            &cert,
            "127.0.0.1"
        ));
        assert!(!verify(
            &verifier(&ca, Some("elsewhere.example"), false),
            &cert,
            "localhost"
        ));
    }

    #[test]
    fn insecure_skips_the_name_but_not_the_chain() {
        let (ca, cert) = pki();
        assert!(verify(&verifier(&ca, None, true), &cert, "127.0.0.1"));
        let (other_ca, _) = pki();
        assert!(!verify(
            &verifier(&other_ca, None, true),
            &cert,
            "localhost"
        ));
    }

    #[test]
    fn a_missing_file_is_named() {
        let tls = BridgeTls {
            ca_file: PathBuf::from("/nonexistent/ca.pem"),
            cert_file: None,
            key_file: None,
            server_name: None,
            insecure: false,
        };
        let error = client_config("hq", &tls).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
        assert!(error.contains("\"hq\""), "{error}");
    }
}
