//! The TLS settings shared by the RPC calls and the watch sockets: rustls with the `ring`
//! provider, the web PKI roots (webpki-roots) and any extra CA certificates the user trusts.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::ClientError;

/// Reads every certificate of a PEM text.
///
/// # Errors
/// [`ClientError::InvalidCertificate`] when the text holds no certificate or a broken one.
pub(crate) fn certificates_from_pem(
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(|error| {
            ClientError::InvalidCertificate { reason: format!("cannot read the PEM text: {error}") }
        })?;
    if certificates.is_empty() {
        return Err(ClientError::InvalidCertificate {
            reason: "the PEM text holds no certificate (no -----BEGIN CERTIFICATE----- block)"
                .into(),
        });
    }
    Ok(certificates)
}

/// A rustls client configuration that trusts the web PKI and `extra_roots`.
///
/// # Errors
/// [`ClientError::InvalidCertificate`] for an extra root rustls cannot use as a trust anchor.
pub(crate) fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for certificate in extra_roots {
        roots.add(certificate.clone()).map_err(|error| ClientError::InvalidCertificate {
            reason: format!("cannot trust it as a root: {error}"),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| ClientError::InvalidCertificate {
            reason: format!("cannot set up TLS: {error}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_a_certificate_is_refused_in_words() {
        let error = certificates_from_pem(b"hello").expect_err("no certificate");
        assert!(error.to_string().contains("no certificate"), "{error}");
        assert!(client_config(&[]).is_ok());
    }
}
