//! `tally key create|list|revoke`: API keys over the admin RPCs (`key.create`, `key.list`,
//! `key.revoke`), which need a token with the grant `*=admin`.

use clap::Subcommand;
use tally_client::{Client, KeyInfo};
use tally_proto::Grant;

use crate::commands::CliError;
use crate::output::{self, Printer};

/// The key subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Create an API key and print it. The key is shown this once: the server keeps only a
    /// hash of it.
    Create {
        /// Who or what uses the key (1 to 64 of A-Z a-z 0-9 _ . -); history shows it as key:NAME.
        name: String,
        /// What the key may do: PATTERN=ACTION[<=CAP],... as for `tally token --grant`.
        /// Repeat the flag for several grants.
        #[arg(long = "grant", value_name = "GRANT", required = true)]
        grants: Vec<String>,
    },
    /// List every key, revoked ones too, oldest first (never the keys themselves).
    List,
    /// Revoke a key: it stops working at once.
    Revoke {
        /// The key's name.
        name: String,
    },
}

pub(crate) async fn run(
    client: &Client,
    out: &mut Printer,
    command: KeyCommand,
) -> Result<(), CliError> {
    match command {
        KeyCommand::Create { name, grants } => {
            for text in &grants {
                Grant::parse(text).map_err(|error| {
                    CliError::Usage(format!("--grant {text:?}: {}", error.message))
                })?;
            }
            let created = client.create_key(&name, &grants).await?;
            if out.json {
                return out.json_line(&created);
            }
            out.line(&created.key)?;
            // On stderr, so that `KEY=$(tally key create …)` captures the key alone.
            eprintln!(
                "created key {} with grants {}; it is shown only this once",
                created.info.name,
                created.info.grants.join(" ")
            );
            Ok(())
        }
        KeyCommand::List => {
            let keys = client.list_keys().await?;
            if out.json {
                for key in &keys {
                    out.json_line(key)?;
                }
                return Ok(());
            }
            if keys.is_empty() {
                return out.line("no keys");
            }
            for line in key_table(&keys) {
                out.line(&line)?;
            }
            Ok(())
        }
        KeyCommand::Revoke { name } => {
            let key = client.revoke_key(&name).await?;
            if out.json {
                return out.json_line(&key);
            }
            let when = key.revoked_at.as_deref().map_or_else(String::new, output::local_time);
            out.line(&format!("revoked key {} ({when})", key.name))
        }
    }
}

/// Keys as an aligned table: name, created, revoked, grants.
fn key_table(keys: &[KeyInfo]) -> Vec<String> {
    let rows: Vec<[String; 4]> = keys
        .iter()
        .map(|key| {
            [
                key.name.clone(),
                output::local_time(&key.created_at),
                key.revoked_at.as_deref().map_or_else(|| "-".to_owned(), output::local_time),
                key.grants.join(" "),
            ]
        })
        .collect();
    output::aligned(["NAME", "CREATED", "REVOKED", "GRANTS"], &rows, false)
}
