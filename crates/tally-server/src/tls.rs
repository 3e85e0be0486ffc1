//! TLS for `--tls-cert` / `--tls-key`: the PEM files loaded into a rustls acceptor (with the
//! `ring` provider), once, before the server starts, so that a bad file stops it with an
//! error naming the file and what is wrong with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file cannot be read or holds no usable certificate.
    #[error("cannot use the TLS certificate chain {}: {reason}", path.display())]
    Certificate {
        /// The file (`--tls-cert`).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file cannot be read or holds no usable private key.
    #[error("cannot use the TLS private key {}: {reason}", path.display())]
    Key {
        /// The file (`--tls-key`).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The files are each fine, but do not go together (the key is not the certificate's).
    #[error("the TLS key {} does not fit the certificate {}: {reason}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

/// Reads the PEM certificate chain (leaf first) of `path`.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |reason: String| TlsError::Certificate { path: path.to_owned(), reason };
    let text = std::fs::read(path).map_err(|io| error(io.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|pem| error(format!("not valid PEM ({pem})")))?;
    if chain.is_empty() {
        return Err(error(
            "no certificate in it; expected PEM blocks -----BEGIN CERTIFICATE-----, leaf first"
                .into(),
        ));
    }
    Ok(chain)
}

/// Reads the PEM private key (PKCS#8, PKCS#1 or SEC1) of `path`.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let error = |reason: String| TlsError::Key { path: path.to_owned(), reason };
    let text = std::fs::read(path).map_err(|io| error(io.to_string()))?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|pem| match pem {
        rustls_pki_types::pem::Error::NoItemsFound => error(
            "no private key in it; expected a PEM block -----BEGIN PRIVATE KEY----- (PKCS#8), \
             -----BEGIN RSA PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----"
                .into(),
        ),
        other => error(format!("not valid PEM ({other})")),
    })
}

/// The acceptor for `files`: TLS 1.2 and 1.3, HTTP/1.1 by ALPN, no client certificates.
///
/// # Errors
/// A [`TlsError`] naming the file and what is wrong with it.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let chain = certificates(&files.cert_path)?;
    let key = private_key(&files.key_path)?;
    let mismatch = |reason: String| TlsError::Mismatch {
        cert: files.cert_path.clone(),
        key: files.key_path.clone(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| mismatch(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| mismatch(error.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
