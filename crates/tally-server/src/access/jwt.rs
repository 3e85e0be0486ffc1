//! JWT verification with the `jsonwebtoken` crate: which keys, which algorithms, which claims.
//!
//! Only the algorithms of the configured keys are accepted, each verified only with a key of
//! its own family: an HMAC secret checks HS256/384/512 and nothing else, an RSA key RS*/PS*,
//! and so on. So `alg: none` (which `jsonwebtoken` does not even parse) and a token "signed"
//! with HS256 using an RSA public key as the secret are both refused.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use tally_proto::Grant;

/// The shortest HMAC secret accepted: a shorter one can be guessed offline from any token.
pub const MIN_SECRET_BYTES: usize = 32;
/// The longest subject accepted (it is stored with every change the subject makes).
const MAX_SUBJECT_BYTES: usize = 256;
/// The most clock skew allowed: more would quietly stop tokens from expiring.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// One verification key with the algorithms it may check.
#[derive(Clone)]
struct JwtKey {
    key: Arc<DecodingKey>,
    algorithms: Vec<Algorithm>,
    kid: Option<String>,
}

/// Why a set of keys could not be built.
#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    /// The secret is a key file, not a secret: a PEM or JWK public key used as an HMAC secret
    /// would let anyone who holds that public key sign tokens.
    #[error(
        "the JWT secret looks like a {0}, not a shared secret; give public keys with --jwt-public-key or --jwt-jwks, and a secret of random bytes with --jwt-secret-file"
    )]
    NotASecret(&'static str),
    /// The secret is too short.
    #[error(
        "the JWT secret is {0} bytes long; use at least {MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -base64 48`)"
    )]
    ShortSecret(usize),
    /// The PEM is not a public key of a supported kind.
    #[error("not a PEM public key of a supported kind (RSA, EC P-256/P-384 or Ed25519): {0}")]
    BadPem(String),
    /// The JWKS document is unusable.
    #[error("not a usable JWKS document: {0}")]
    BadJwks(String),
}

/// The keys and claim rules a server verifies tokens with.
#[derive(Clone)]
pub struct JwtConfig {
    keys: Vec<JwtKey>,
    /// `aud` values accepted; empty means `aud` is not checked.
    pub audience: Vec<String>,
    /// `iss` values accepted; empty means `iss` is not checked.
    pub issuer: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
}

impl fmt::Debug for JwtConfig {
    // Never the keys themselves: a secret must not reach a log.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("JwtConfig")
            .field("algorithms", &self.algorithms())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl Default for JwtConfig {
    /// No keys (JWTs are refused), no `aud` or `iss` rule, 30 s of leeway.
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            audience: Vec::new(),
            issuer: Vec::new(),
            leeway: Duration::from_secs(30),
        }
    }
}

impl JwtConfig {
    /// Adds an HMAC secret (HS256, HS384, HS512).
    ///
    /// # Errors
    /// When it is shorter than [`MIN_SECRET_BYTES`].
    pub fn add_secret(&mut self, secret: &[u8]) -> Result<(), JwtKeyError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(JwtKeyError::ShortSecret(secret.len()));
        }
        let text = secret.trim_ascii_start();
        if text.starts_with(b"-----BEGIN") {
            return Err(JwtKeyError::NotASecret("PEM key"));
        }
        if text.starts_with(b"{") {
            return Err(JwtKeyError::NotASecret("JSON key (JWK)"));
        }
        let key =
            DecodingKey::from_secret(secret).map_err(|e| JwtKeyError::BadPem(e.to_string()))?;
        self.push(key, AlgorithmFamily::Hmac, None);
        Ok(())
    }

    /// Adds a PEM public key: RSA (RS*, PS*), EC (ES256, ES384) or Ed25519 (EdDSA).
    ///
    /// # Errors
    /// When the PEM is none of these.
    pub fn add_public_pem(&mut self, pem: &[u8]) -> Result<(), JwtKeyError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            self.push(key, AlgorithmFamily::Rsa, None);
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            self.push(key, AlgorithmFamily::Ec, None);
        } else {
            let key =
                DecodingKey::from_ed_pem(pem).map_err(|e| JwtKeyError::BadPem(e.to_string()))?;
            self.push(key, AlgorithmFamily::Ed, None);
        }
        Ok(())
    }

    /// Adds every signing key of a JWKS document (`{"keys": [...]}`); a key with an `alg`
    /// accepts only that algorithm, one without accepts its family's.
    ///
    /// # Errors
    /// When the document is not a JWKS, or has no usable key.
    pub fn add_jwks(&mut self, json: &str) -> Result<(), JwtKeyError> {
        let set: JwkSet =
            serde_json::from_str(json).map_err(|e| JwtKeyError::BadJwks(e.to_string()))?;
        let before = self.keys.len();
        for jwk in &set.keys {
            // Keys meant for encryption never verify a signature.
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue;
            }
            let key =
                DecodingKey::from_jwk(jwk).map_err(|e| JwtKeyError::BadJwks(e.to_string()))?;
            if key.family() == AlgorithmFamily::Hmac {
                return Err(JwtKeyError::BadJwks(
                    "it holds a symmetric (oct) key; give a shared secret with --jwt-secret-file instead".into(),
                ));
            }
            let algorithms =
                match jwk.common.key_algorithm.and_then(|alg| Algorithm::try_from(alg).ok()) {
                    Some(algorithm) => vec![algorithm],
                    None => key.family().algorithms().to_vec(),
                };
            self.keys.push(JwtKey {
                key: Arc::new(key),
                algorithms,
                kid: jwk.common.key_id.clone(),
            });
        }
        if self.keys.len() == before {
            return Err(JwtKeyError::BadJwks("it has no keys".into()));
        }
        Ok(())
    }

    fn push(&mut self, key: DecodingKey, family: AlgorithmFamily, kid: Option<String>) {
        self.keys.push(JwtKey {
            key: Arc::new(key),
            algorithms: family.algorithms().to_vec(),
            kid,
        });
    }

    /// Whether any key is configured.
    pub fn is_configured(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The algorithms accepted, for people.
    pub fn algorithms(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .keys
            .iter()
            .flat_map(|key| key.algorithms.iter().map(|alg| format!("{alg:?}")))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The verifier of these keys and rules, with each key's validation rules built once
    /// rather than for every token.
    pub(crate) fn verifier(&self) -> Verifier {
        let leeway = self.leeway.min(MAX_LEEWAY);
        let keys = self
            .keys
            .iter()
            .map(|key| {
                let mut validation = Validation::new(key.algorithms[0]);
                validation.algorithms.clone_from(&key.algorithms);
                validation.leeway = leeway.as_secs();
                validation.validate_nbf = true;
                validation.set_required_spec_claims(&["exp", "sub"]);
                if self.audience.is_empty() {
                    validation.validate_aud = false;
                } else {
                    validation.set_audience(&self.audience);
                    validation.required_spec_claims.insert("aud".into());
                }
                if !self.issuer.is_empty() {
                    validation.set_issuer(&self.issuer);
                    validation.required_spec_claims.insert("iss".into());
                }
                (key.clone(), validation)
            })
            .collect();
        Verifier {
            keys,
            algorithms: self.algorithms(),
            audience: self.audience.clone(),
            issuer: self.issuer.clone(),
            leeway,
        }
    }
}

/// Verifies tokens with the keys and rules of a [`JwtConfig`], prepared once.
pub(crate) struct Verifier {
    keys: Vec<(JwtKey, Validation)>,
    algorithms: Vec<String>,
    audience: Vec<String>,
    issuer: Vec<String>,
    leeway: Duration,
}

impl Verifier {
    /// Whether any key is configured.
    pub(crate) fn is_configured(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The algorithms accepted, for people.
    pub(crate) fn algorithms(&self) -> &[String] {
        &self.algorithms
    }

    /// The clock skew allowed on token times.
    pub(crate) fn leeway(&self) -> Duration {
        self.leeway
    }

    /// Verifies `token` and reads its claims.
    pub(crate) fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            TokenError::Invalid(
                "the token is not a well-formed JWT with a supported algorithm".into(),
            )
        })?;
        let mut candidates: Vec<&(JwtKey, Validation)> =
            self.keys.iter().filter(|(key, _)| key.algorithms.contains(&header.alg)).collect();
        // A `kid` that names a key picks that key alone; one that names none (or no `kid`)
        // leaves every key of the algorithm to try.
        if let Some(wanted) = &header.kid
            && candidates.iter().any(|(key, _)| key.kid.as_ref() == Some(wanted))
        {
            candidates.retain(|(key, _)| key.kid.as_ref() == Some(wanted));
        }
        if candidates.is_empty() {
            return Err(TokenError::Invalid(format!(
                "tokens signed with {:?} are not accepted here; accepted: {}",
                header.alg,
                self.algorithms.join(", ")
            )));
        }
        let mut last = TokenError::Invalid("the token's signature does not verify".into());
        for (candidate, validation) in candidates {
            match jsonwebtoken::decode::<Claims>(token, &candidate.key, validation) {
                Ok(data) => return data.claims.into_verified(now, self.leeway.as_secs()),
                Err(error) => {
                    last = match error.kind() {
                        ErrorKind::ExpiredSignature => TokenError::Expired,
                        ErrorKind::InvalidSignature => {
                            TokenError::Invalid("the token's signature does not verify".into())
                        }
                        ErrorKind::ImmatureSignature => {
                            return Err(TokenError::Invalid(
                                "the token is not valid yet (nbf is in the future)".into(),
                            ));
                        }
                        ErrorKind::InvalidAudience => {
                            return Err(TokenError::Invalid(format!(
                                "the token's aud is not one this server accepts ({})",
                                self.audience.join(", ")
                            )));
                        }
                        ErrorKind::InvalidIssuer => {
                            return Err(TokenError::Invalid(format!(
                                "the token's iss is not one this server accepts ({})",
                                self.issuer.join(", ")
                            )));
                        }
                        ErrorKind::MissingRequiredClaim(claim) => {
                            return Err(TokenError::Invalid(format!(
                                "the token has no {claim} claim, which is required"
                            )));
                        }
                        _ => TokenError::Invalid(format!("the token is not valid: {error}")),
                    };
                    if matches!(last, TokenError::Expired) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

/// A verified token's subject, expiry and grants.
#[derive(Debug)]
pub(crate) struct VerifiedToken {
    pub(crate) subject: String,
    pub(crate) expires_at: u64,
    pub(crate) grants: Vec<Grant>,
}

/// Why a token was refused. Never holds the token itself.
#[derive(Debug)]
pub(crate) enum TokenError {
    /// Its `exp` has passed.
    Expired,
    /// Anything else, in words.
    Invalid(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    tally: Option<TallyClaim>,
}

/// Tally's own claim.
#[derive(Deserialize)]
struct TallyClaim {
    #[serde(default)]
    grants: Vec<String>,
}

impl Claims {
    fn into_verified(self, now: u64, leeway: u64) -> Result<VerifiedToken, TokenError> {
        if self.iat.is_some_and(|iat| iat > now + leeway) {
            return Err(TokenError::Invalid("the token's iat is in the future".into()));
        }
        let reserved = self.sub.eq_ignore_ascii_case("anonymous")
            || self.sub.get(..4).is_some_and(|start| start.eq_ignore_ascii_case("key:"));
        if self.sub.is_empty() || reserved {
            return Err(TokenError::Invalid(format!(
                "the token's sub {:?} is reserved; a subject must not be empty, \"anonymous\" or start with \"key:\"",
                self.sub
            )));
        }
        // Subjects go into history and logs: printable and bounded.
        if self.sub.len() > MAX_SUBJECT_BYTES || self.sub.chars().any(char::is_control) {
            return Err(TokenError::Invalid(format!(
                "the token's sub is {} bytes or has control characters; allowed: at most {MAX_SUBJECT_BYTES} bytes of printable text",
                self.sub.len()
            )));
        }
        let texts = self.tally.map(|claim| claim.grants).unwrap_or_default();
        let grants = Grant::parse_all(&texts).map_err(|error| {
            TokenError::Invalid(format!(
                "the token's tally.grants claim is invalid: {}",
                error.message
            ))
        })?;
        Ok(VerifiedToken { subject: self.sub, expires_at: self.exp, grants })
    }
}
