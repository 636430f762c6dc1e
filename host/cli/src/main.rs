//! `cellar`: run a Cellar node, deploy canisters and call them.
//!
//! ```text
//! cellar start [--data-dir DIR] [--listen ADDR]
//! cellar deploy <EXAMPLE|FILE.wasm> [--arg WAVE]
//! cellar call <CANISTER> 'method(args)' [--json] [--args-json JSON]
//! cellar query <CANISTER> 'method(args)' [--json] [--args-json JSON]
//! cellar upgrade <CANISTER> <EXAMPLE|FILE.wasm> [--arg WAVE]
//! cellar status [CANISTER]
//! cellar describe <CANISTER>
//! cellar logs <CANISTER>
//! ```
//!
//! Client commands sign every request with the identity in `--identity`
//! (created on first use) and talk to the node at `--url` (`CELLAR_URL`).

mod agent;
mod bench;
mod bench_scheduler;
mod call_text;
mod commands;
mod identity;
mod render;
mod start;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use cellar_node::engine::MemoryTracker;
use cellar_types::Principal;
use cellar_types::api::DEFAULT_LISTEN;
use clap::{Parser, Subcommand};

use crate::agent::Agent;
use crate::commands::CallKind;
use crate::identity::Identity;

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "cellar",
    version,
    about = "Run a Cellar node, deploy canisters and call them."
)]
struct Cli {
    /// The node to talk to.
    #[arg(long, global = true, env = "CELLAR_URL", default_value_t = default_url())]
    url: String,
    /// The identity file (an Ed25519 seed, hex); created on first use.
    /// [default: <config dir>/cellar/identity.key]
    #[arg(long, global = true, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node in the foreground (examples are deployed on a fresh data dir).
    Start {
        /// Where the node keeps its state [default: <local data dir>/cellar/node].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The address to serve the HTTP API on.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// How dirty pages are tracked: signal, userfaultfd or copy-all
        /// [default: the fastest the kernel supports].
        #[arg(long, value_name = "TRACKER")]
        memory_tracker: Option<MemoryTracker>,
        /// Rounds between checkpoints.
        #[arg(long, value_name = "ROUNDS", default_value_t = 500)]
        checkpoint_interval: u64,
    },
    /// Create a canister running an example or a component file; prints its id.
    Deploy {
        /// An example name (counter, kv, ledger) or a path to a .wasm component.
        module: String,
        /// The init argument list as WAVE, e.g. '(some(5))'.
        #[arg(long, value_name = "WAVE")]
        arg: Option<String>,
    },
    /// Send an update call, e.g. `cellar call <id> 'add("apple", 5)'`.
    Call(CallArgs),
    /// Send a query, e.g. `cellar query <id> 'get("apple")'`.
    Query(CallArgs),
    /// Upgrade a canister's code, keeping its stable memory.
    Upgrade {
        /// The canister id.
        canister: Principal,
        /// An example name or a path to a .wasm component.
        module: String,
        /// The post-upgrade argument list as WAVE.
        #[arg(long, value_name = "WAVE")]
        arg: Option<String>,
    },
    /// Show the node's status and canisters, or one canister's status.
    Status {
        /// The canister id; omit for the whole node.
        canister: Option<Principal>,
    },
    /// Show a canister's interface.
    Describe {
        /// The canister id.
        canister: Principal,
    },
    /// Show a canister's log.
    Logs {
        /// The canister id.
        canister: Principal,
    },
    /// Run a benchmark in-process and print its figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// The benchmarks of `cellar bench`.
#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Orthogonal persistence: message cost against pages touched for each
    /// memory tracker, checkpoint and restart times.
    Memory(bench::MemoryBenchArgs),
    /// Rounds at scale: install time and memory for many canisters, round
    /// time with idle canisters, latency under a flood, call round trips.
    Scheduler(bench_scheduler::SchedulerBenchArgs),
}

/// Arguments of `call` and `query`.
#[derive(clap::Args, Debug)]
struct CallArgs {
    /// The canister id.
    canister: Principal,
    /// The method and its WAVE arguments: `add("apple", 5)`, `get()` or `get`.
    #[arg(value_name = "METHOD(ARGS)")]
    call: String,
    /// Print the reply as JSON instead of WAVE.
    #[arg(long)]
    json: bool,
    /// The arguments as JSON (an array, or an object by name) instead of
    /// WAVE; the call text is then just the method name.
    #[arg(long, value_name = "JSON")]
    args_json: Option<String>,
}

/// `http://` + [`DEFAULT_LISTEN`].
fn default_url() -> String {
    format!("http://{DEFAULT_LISTEN}")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command.
fn run(cli: Cli) -> Result<()> {
    let identity_path = cli.identity.unwrap_or_else(identity::default_path);
    if let Command::Start {
        data_dir,
        listen,
        memory_tracker,
        checkpoint_interval,
    } = cli.command
    {
        let data_dir = data_dir.unwrap_or_else(start::default_data_dir);
        let mut limits = cellar_node::engine::Limits::default();
        if let Some(tracker) = memory_tracker {
            tracker.check_available().map_err(anyhow::Error::msg)?;
            limits.memory_tracker = tracker;
        }
        let settings = start::Settings {
            data_dir,
            listen,
            limits,
            checkpoint_interval,
        };
        return start::run(settings, &identity_path);
    }
    match &cli.command {
        Command::Bench(BenchCommand::Memory(args)) => return bench::memory(args),
        Command::Bench(BenchCommand::Scheduler(args)) => {
            return bench_scheduler::scheduler(args);
        }
        _ => {}
    }
    let agent = Agent::new(&cli.url, Identity::load_or_create(&identity_path)?);
    match cli.command {
        Command::Start { .. } | Command::Bench(_) => unreachable!("handled above"),
        Command::Deploy { module, arg } => commands::deploy(&agent, &module, arg),
        Command::Call(a) => call(&agent, CallKind::Update, a),
        Command::Query(a) => call(&agent, CallKind::Query, a),
        Command::Upgrade {
            canister,
            module,
            arg,
        } => commands::upgrade(&agent, &canister, &module, arg),
        Command::Status { canister } => commands::status(&agent, canister.as_ref()),
        Command::Describe { canister } => commands::describe(&agent, &canister),
        Command::Logs { canister } => commands::logs(&agent, &canister),
    }
}

/// Dispatches `call`/`query`.
fn call(agent: &Agent, kind: CallKind, a: CallArgs) -> Result<()> {
    commands::call(
        agent,
        kind,
        &a.canister,
        &a.call,
        a.args_json.as_deref(),
        a.json,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_forms() {
        let id = Principal::canister(0).to_text();
        let cli = Cli::try_parse_from([
            "cellar",
            "--url",
            "http://127.0.0.1:7171",
            "call",
            &id,
            r#"add("apple", 5)"#,
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.url, "http://127.0.0.1:7171");
        assert!(matches!(
            cli.command,
            Command::Call(CallArgs { json: true, .. })
        ));
        assert!(Cli::try_parse_from(["cellar", "status"]).is_ok());
        assert!(Cli::try_parse_from(["cellar", "start", "--listen", "127.0.0.1:7171"]).is_ok());
        assert!(Cli::try_parse_from(["cellar", "logs", "not-a-principal"]).is_err());
    }
}
