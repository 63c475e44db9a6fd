//! `coffer auth`: makes API clients and signing keys for `coffer serve`'s authentication.

use std::process::ExitCode;

use coffer_server::auth::{secret_sha256_hex, Auth, SCOPES, TOKEN_TTL_SECS_DEFAULT};
use rand::RngCore;
use serde_json::json;

#[derive(clap::Subcommand)]
pub enum AuthCommand {
    /// Make a client: prints its new secret (shown once, keep it) and the entry to add to the
    /// clients file, which holds only the secret's SHA-256.
    Client {
        /// The client's id (what it sends as `client_id`).
        #[arg(long)]
        id: String,
        /// Comma-separated: ledger:read, ledger:write, wallets:read, wallets:write.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// Print a new signing key (32 random bytes, in hex) for `serve --auth-signing-key-file`.
    Key,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh signing key, as `coffer auth key` prints it.
pub fn new_key() -> Vec<u8> {
    random_hex().into_bytes()
}

pub fn run(command: AuthCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuthCommand::Client { id, scopes } => {
            let secret = random_hex();
            let entry = json!({
                "id": id,
                "secretSha256": secret_sha256_hex(&secret),
                "scopes": scopes,
            });
            // Checked as `serve` will read it.
            Auth::new(
                &json!({ "clients": [entry.clone()] }).to_string(),
                new_key(),
                TOKEN_TTL_SECS_DEFAULT,
            )
            .map_err(|e| anyhow::anyhow!("{e} (scopes: {})", SCOPES.join(", ")))?;
            println!("client_id:     {id}");
            println!("client_secret: {secret}");
            println!("clients file entry (inside {{\"clients\": [...]}}):");
            println!("{entry}");
        }
        AuthCommand::Key => println!("{}", random_hex()),
    }
    Ok(ExitCode::SUCCESS)
}
