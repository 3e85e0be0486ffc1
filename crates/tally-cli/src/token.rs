//! `tally token`: prints an HS256 JWT for a server that verifies tokens with a shared secret
//! (`tally serve --jwt-secret-file`), for trying things out and for scripts.
//!
//! The signing is jsonwebtoken's; nothing here is cryptography.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde::Serialize;
use tally_proto::Grant;

use crate::commands::CliError;
use crate::output::Printer;

/// The shortest secret accepted: 256 bits, the size of HS256's hash.
pub(crate) const MIN_SECRET_BYTES: usize = 32;

/// Flags of `tally token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The file holding the shared secret, as the server reads it (trailing whitespace and
    /// newlines are not part of it); at least 32 bytes. TALLY_JWT_SECRET (the secret itself)
    /// may stand in for it.
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,

    /// The token's subject (`sub`): who the bearer is, as history's `by` shows it.
    #[arg(long, value_name = "SUBJECT")]
    sub: String,

    /// What the bearer may do: PATTERN=ACTION[<=CAP],... for example 'likes:*=read,increment<=1'
    /// or 'user:{sub}:*=read,increment'; actions are read, increment, decrement, set, reset,
    /// admin. Repeat the flag for several grants. Without any, the token may do nothing.
    #[arg(long = "grant", value_name = "GRANT")]
    grants: Vec<String>,

    /// How long the token is valid, e.g. 1h, 15m, 30s.
    #[arg(long, default_value = "1h", value_parser = parse_ttl, value_name = "DURATION")]
    ttl: Duration,

    /// The audience (`aud`), for a server started with --jwt-audience.
    #[arg(long, value_name = "AUDIENCE")]
    aud: Option<String>,

    /// The issuer (`iss`), for a server started with --jwt-issuer.
    #[arg(long, value_name = "ISSUER")]
    iss: Option<String>,
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration >= Duration::from_secs(1) => Ok(duration),
        Ok(_) => Err("must be at least 1s, e.g. 1h or 15m".into()),
        Err(error) => Err(format!("{error}; write a duration such as 1h or 15m")),
    }
}

/// The claims of the token (docs/PROTOCOL.md §9.3).
#[derive(Debug, Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    tally: TallyClaim,
}

/// Tally's own claim: the grants.
#[derive(Debug, Serialize)]
struct TallyClaim {
    grants: Vec<String>,
}

/// Reads the shared secret by the server's rule: the file's content (or TALLY_JWT_SECRET)
/// without trailing whitespace, at least [`MIN_SECRET_BYTES`] long.
fn read_secret(secret_file: Option<&std::path::Path>) -> Result<Vec<u8>, CliError> {
    let (mut secret, origin) = match secret_file {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|error| {
                CliError::Usage(format!("cannot read --secret-file {}: {error}", path.display()))
            })?;
            (bytes, format!("the secret in {}", path.display()))
        }
        None => match std::env::var_os("TALLY_JWT_SECRET") {
            Some(value) => (value.into_encoded_bytes(), "TALLY_JWT_SECRET".to_owned()),
            None => {
                return Err(CliError::Usage(
                    "no secret: give --secret-file PATH (the file `tally serve --jwt-secret-file` \
                     reads) or set TALLY_JWT_SECRET"
                        .into(),
                ));
            }
        },
    };
    while secret.last().is_some_and(u8::is_ascii_whitespace) {
        secret.pop();
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(CliError::Usage(format!(
            "{origin} is {} bytes long; it must be at least {MIN_SECRET_BYTES} bytes (not counting \
             trailing whitespace), e.g. made with `head -c 32 /dev/urandom | base64`",
            secret.len()
        )));
    }
    Ok(secret)
}

/// Prints the token (with `--json`, as `{"token": …, "expiresAt": …}`).
pub(crate) fn run(args: &TokenArgs, out: &mut Printer) -> Result<(), CliError> {
    let mut grants = Vec::with_capacity(args.grants.len());
    for text in &args.grants {
        let grant = Grant::parse(text)
            .map_err(|error| CliError::Usage(format!("--grant {text:?}: {}", error.message)))?;
        grants.push(grant.to_string());
    }
    if args.sub.is_empty() {
        return Err(CliError::Usage("--sub must not be empty".into()));
    }
    let secret = read_secret(args.secret_file.as_deref())?;
    let iat = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let exp = iat.saturating_add(args.ttl.as_secs());
    let claims = Claims {
        sub: &args.sub,
        iat,
        exp,
        aud: args.aud.as_deref(),
        iss: args.iss.as_deref(),
        tally: TallyClaim { grants },
    };
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let sign_error = |error: jsonwebtoken::errors::Error| {
        CliError::Usage(format!("cannot sign the token: {error}"))
    };
    let key = jsonwebtoken::EncodingKey::from_secret(&secret).map_err(sign_error)?;
    let token = jsonwebtoken::encode(&header, &claims, &key).map_err(sign_error)?;
    if out.json {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Printed<'a> {
            token: &'a str,
            expires_at: String,
        }
        let expires_at =
            chrono::DateTime::from_timestamp(i64::try_from(exp).unwrap_or(i64::MAX), 0)
                .map_or_else(String::new, |time| time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        out.json_line(&Printed { token: &token, expires_at })
    } else {
        out.line(&token)
    }
}
