//! `cellar start`: runs a node in the foreground.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use cellar_types::Principal;
use cellar_types::api::DEFAULT_LISTEN;

use crate::render;
use cellar_agent::{Agent, Identity};

/// The default data directory: `<local data dir>/cellar/node`, or `./.cellar`.
pub fn default_data_dir() -> PathBuf {
    dirs::data_local_dir()
        .map(|d| d.join("cellar").join("node"))
        .unwrap_or_else(|| PathBuf::from(".cellar"))
}

/// How `cellar start` runs the node.
pub struct Settings {
    /// Where state lives.
    pub data_dir: PathBuf,
    /// The API's address.
    pub listen: SocketAddr,
    /// Execution limits and the memory tracker.
    pub limits: cellar_node::engine::Limits,
    /// Rounds between checkpoints.
    pub checkpoint_interval: u64,
}

/// Starts a node, prints how to reach it and serves until Ctrl-C.
pub fn run(settings: Settings, identity: Identity) -> Result<()> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(settings, identity))
}

/// Logs of the node to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The async part of [`run`].
async fn serve(settings: Settings, identity: Identity) -> Result<()> {
    let Settings {
        data_dir,
        listen,
        limits,
        checkpoint_interval,
    } = settings;
    // The examples are controlled by whoever starts the node, so that for
    // example the ledger's `mint` works for them.
    let me = identity.principal().clone();
    let mut config = cellar_node::NodeConfig::new(&data_dir, listen);
    tracing::info!(tracker = limits.memory_tracker.name(), "memory tracker");
    config.limits = limits;
    config.checkpoint_interval = checkpoint_interval;
    config.example_controllers = vec![me.clone()];
    let node = cellar_node::start(config)
        .await
        .with_context(|| format!("cannot start the node on {}", data_dir.display()))?;
    let url = format!("http://{}", node.addr);
    // Client commands need `--url` unless the node is on the default
    // address; they start the way this one was started (`cargo run -p
    // cellar --` from a checkout, `cellar` once installed).
    let cellar = hint_command(crate::invocation::cellar(), &node.addr.to_string());

    println!("Cellar node running at {url}");
    println!("  data dir: {}", data_dir.display());
    if node.examples.is_empty() {
        // An existing data dir: list what it holds, concurrently with serving.
        let cellar = cellar.clone();
        tokio::task::spawn_blocking(move || list_existing(&url, identity, &cellar));
    } else {
        println!("\nExample canisters:");
        for (name, id) in &node.examples {
            println!("  {name:<8} {id}");
        }
        println!("\nTry:");
        for (name, id) in &node.examples {
            for line in example_lines(&cellar, name, id, &me) {
                println!("  {line}");
            }
        }
        println!("\nPress Ctrl-C to stop.");
    }
    node.wait().await
}

/// The start of the client commands `start` prints for a node listening on
/// `listen`, run by `invocation`.
fn hint_command(invocation: &str, listen: &str) -> String {
    if listen == DEFAULT_LISTEN {
        invocation.to_string()
    } else {
        format!("{invocation} --url http://{listen}")
    }
}

/// Ready-to-paste commands for one deployed example.
fn example_lines(cellar: &str, name: &str, id: &Principal, me: &Principal) -> Vec<String> {
    match name {
        "counter" => vec![
            format!("{cellar} call {id} 'increment()'"),
            format!("{cellar} query {id} 'get()'"),
        ],
        "kv" => vec![
            format!(r#"{cellar} call {id} 'add("apple", 5)'"#),
            format!(r#"{cellar} query {id} 'get("apple")'"#),
        ],
        "ledger" => vec![
            format!(r#"{cellar} call {id} 'mint("{me}", 100)'"#),
            format!(r#"{cellar} query {id} 'balance("{me}")'"#),
            format!("{cellar} query {id} 'total-supply()'"),
        ],
        _ => vec![format!("{cellar} describe {id}")],
    }
}

/// Prints the canisters of a node that started on existing state.
fn list_existing(url: &str, identity: Identity, cellar: &str) {
    let agent = Agent::new(url, identity);
    match agent.canisters() {
        Ok(list) if list.is_empty() => println!("\nNo canisters yet: try `{cellar} deploy kv`."),
        Ok(list) => {
            println!("\nCanisters:");
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    vec![
                        c.canister_id.to_text(),
                        render::run_status(c.status).to_string(),
                        c.module_hash
                            .as_deref()
                            .map_or("-".to_string(), |h| h.chars().take(12).collect()),
                    ]
                })
                .collect();
            print!("{}", render::table(&["ID", "STATUS", "MODULE"], &rows));
            println!("\nInspect one with `{cellar} describe <id>`.");
        }
        Err(e) => tracing::warn!("cannot list the canisters: {e:#}"),
    }
    println!("\nPress Ctrl-C to stop.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_start_as_the_user_started_cellar() {
        let id = Principal::canister(1);
        let me = Principal::anonymous();
        let cellar = hint_command("cargo run -p cellar --", DEFAULT_LISTEN);
        assert_eq!(
            example_lines(&cellar, "kv", &id, &me)[0],
            format!(r#"cargo run -p cellar -- call {id} 'add("apple", 5)'"#)
        );
        assert_eq!(
            hint_command("cellar", "127.0.0.1:7171"),
            "cellar --url http://127.0.0.1:7171"
        );
    }
}
