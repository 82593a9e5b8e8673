//! `longrun auth token`: a fresh token and the auth-file entry for it.

use std::process::ExitCode;

use longrun::auth::{Role, token};
use longrun::model::tenant::check_tenant_name;

/// Authentication commands.
#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Make a new random token. The [[principal]] entry for the auth file
    /// goes to stdout (so `>> auth.toml` appends it) and the token itself,
    /// shown once, to stderr; the file keeps only the token's SHA-256.
    Token {
        /// The principal's name (unique in the file).
        #[arg(long)]
        name: String,
        /// The tenant it works in.
        #[arg(long)]
        tenant: String,
        /// Its role: worker, reader, writer or admin.
        #[arg(long, default_value = "reader")]
        role: Role,
        /// With --role worker: a kind it may lease ("*" for any); repeat
        /// or comma-separate for several.
        #[arg(long = "kind", value_delimiter = ',')]
        kinds: Vec<String>,
    },
}

/// Runs an auth command.
pub fn run(command: AuthCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuthCommand::Token {
            name,
            tenant,
            role,
            kinds,
        } => {
            check_tenant_name(&tenant).map_err(anyhow::Error::msg)?;
            if (role == Role::Worker) == kinds.is_empty() {
                anyhow::bail!("--kind goes with --role worker, which needs at least one");
            }
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                anyhow::bail!("--name must be printable and not empty");
            }
            let token = token::generate();
            eprintln!("token for {name} (shown once; give it to the caller as LONGRUN_TOKEN):");
            eprintln!("{token}");
            say!("[[principal]]");
            say!("name = {}", toml_string(&name));
            say!("tenant = {}", toml_string(&tenant));
            say!("roles = [\"{role}\"]");
            if !kinds.is_empty() {
                let kinds: Vec<String> = kinds.iter().map(|k| toml_string(k)).collect();
                say!("kinds = [{}]", kinds.join(", "));
            }
            say!("token_sha256 = \"{}\"", token::digest_hex(&token));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A TOML basic string.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}
