//! `cellar`: run a Cellar node, deploy canisters and call them.
//!
//! This file holds the clap command tree and dispatches each command to
//! its module: `start.rs`, `commands.rs` (deploy, call, query, request,
//! upgrade, status, describe, logs), `canister.rs`, `identity.rs`,
//! `project.rs` (with `templates/`), `fleet.rs`, and the benchmarks
//! (`bench.rs`: memory, `bench_api.rs`, `bench_scheduler.rs`,
//! `bench_fleet.rs`, `bench_sync.rs`); `progress.rs`, `output.rs` and
//! `render.rs` print.
//!
//! ```text
//! cellar start [--data-dir DIR] [--listen ADDR]
//! cellar new <NAME> --lang rust|python|js      cellar build      cellar deploy
//! cellar deploy <EXAMPLE|FILE.wasm> [--arg WAVE]
//! cellar call <CANISTER> 'method(args)' [--args-json JSON] [--no-wait]
//! cellar query <CANISTER> 'method(args)' [--args-json JSON]
//! cellar request <REQUEST-ID>
//! cellar upgrade <CANISTER> <EXAMPLE|FILE.wasm> [--arg WAVE]
//! cellar status [CANISTER]      cellar describe <CANISTER>      cellar logs <CANISTER>
//! cellar canister list|status|stop|start|delete|controllers ...
//! cellar identity new|list|use|show
//! cellar completions bash|zsh|fish|...
//! cellar bench memory|api|scheduler|fleet|sync
//! ```
//!
//! Client commands sign every request with the current identity (`cellar
//! identity use`, or `--identity FILE`), talk to the node at `--url`
//! (`CELLAR_URL`) and print JSON with `--json`.

mod bench;
mod bench_api;
mod bench_fleet;
mod bench_scheduler;
mod bench_sync;
mod call_text;
mod canister;
mod commands;
mod fleet;
mod identity;
mod invocation;
mod output;
mod progress;
mod project;
mod render;
mod start;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use cellar_agent::{Agent, Identity};
use cellar_node::engine::MemoryTracker;
use cellar_types::Principal;
use cellar_types::api::DEFAULT_LISTEN;
use clap::{CommandFactory, Parser, Subcommand};

use crate::commands::CallKind;
use crate::output::Output;

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "cellar",
    version,
    about = "Run a Cellar node, deploy canisters and call them."
)]
struct Cli {
    /// The node to talk to; give it several times (or `CELLAR_URL`
    /// comma-separated) for replicas of a subnet: when one does not answer
    /// the next is tried.
    #[arg(
        long,
        global = true,
        env = "CELLAR_URL",
        value_delimiter = ',',
        default_values_t = [default_url()]
    )]
    url: Vec<String>,
    /// A fleet directory (`cellar fleet up --dir`): talk to its replicas,
    /// from its `urls.txt`, before any `--url`.
    #[arg(long, global = true, value_name = "DIR")]
    fleet: Option<PathBuf>,
    /// An identity file (an Ed25519 seed, hex; created on first use) instead
    /// of the current identity.
    #[arg(long, global = true, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Print results as JSON (for scripts).
    #[arg(long, global = true)]
    json: bool,
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
        /// How dirty pages are tracked: uffd-auto, signal, userfaultfd,
        /// uffd-mapped or copy-all [default: uffd-auto where the kernel has
        /// userfaultfd, else signal].
        #[arg(long, value_name = "TRACKER")]
        memory_tracker: Option<MemoryTracker>,
        /// Rounds between checkpoints.
        #[arg(long, value_name = "ROUNDS", default_value_t = 500)]
        checkpoint_interval: u64,
    },
    /// Create a canister project: `cellar new hello --lang rust`.
    New(project::NewArgs),
    /// Build the canister project in the current directory (or --project).
    Build {
        /// The project directory.
        #[arg(long, value_name = "DIR", default_value = ".")]
        project: PathBuf,
    },
    /// Deploy an example, a component file, or (with no argument) the
    /// project in the current directory; prints the canister id.
    Deploy {
        /// An example name (counter, kv, ledger), a path to a .wasm
        /// component; omit to build and deploy the project.
        module: Option<String>,
        /// The init argument list as WAVE, e.g. '(some(5))'.
        #[arg(long, value_name = "WAVE")]
        arg: Option<String>,
        /// The project directory when no module is given.
        #[arg(long, value_name = "DIR", default_value = ".")]
        project: PathBuf,
    },
    /// Send an update call, e.g. `cellar call <id> 'add("apple", 5)'`.
    Call(CallArgs),
    /// Send a query, e.g. `cellar query <id> 'get("apple")'`.
    Query(CallArgs),
    /// Show a submitted request's status and result.
    Request {
        /// The request id printed by `cellar call --no-wait`.
        request_id: String,
        /// Wait until the request is done and print its reply (as `call`
        /// does); on a subnet, any replica can be asked.
        #[arg(long)]
        wait: bool,
    },
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
    /// Manage canisters: list, status, stop, start, delete, top-up, controllers.
    #[command(subcommand)]
    Canister(canister::CanisterCommand),
    /// Show or replace the node's policies (the scheduler policy).
    #[command(subcommand)]
    Policy(canister::PolicyCommand),
    /// Manage identities: new, list, use, show.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Print a shell completion script: `cellar completions bash > ...`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Run a benchmark and print its figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Subnets: `cellar subnet new` writes a genesis and key files.
    #[command(subcommand)]
    Subnet(SubnetCommand),
    /// One replica of a subnet: `cellar node start`.
    #[command(subcommand)]
    Node(NodeCommand),
    /// A local subnet of replica processes: `cellar fleet up|down`.
    #[command(subcommand)]
    Fleet(FleetCommand),
}

/// `cellar subnet ...`.
#[derive(Subcommand, Debug)]
enum SubnetCommand {
    /// Deal the keys of a new subnet: writes `genesis.json` and one key
    /// file per node (0600; a trusted dealer for now, a DKG is future work).
    New {
        /// The nodes' consensus (QUIC) addresses: `127.0.0.1:7001,...`.
        #[arg(long)]
        nodes: String,
        /// Where to write the files.
        #[arg(long)]
        out: PathBuf,
        /// The consensus policy every replica runs: icc (the embedded
        /// component, default), round-robin, native-icc.
        #[arg(long)]
        consensus_policy: Option<String>,
        /// Rounds between checkpoints on every replica (default 500; a
        /// multiple of the catch-up interval, 10).
        #[arg(long)]
        checkpoint_interval: Option<u64>,
    },
}

/// `cellar node ...`.
#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// Run one replica of a subnet in the foreground.
    Start {
        /// The subnet's genesis file.
        #[arg(long)]
        config: PathBuf,
        /// This node's key file.
        #[arg(long)]
        key: PathBuf,
        /// Where the replica keeps its state.
        #[arg(long)]
        data_dir: PathBuf,
        /// The HTTP API's address.
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// One-way delay injected into every message sent (ms).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Test only: misbehave (equivocate, bad-shares, garbage).
        #[arg(long, hide = true)]
        byzantine: Option<fleet::Fault>,
        #[command(flatten)]
        sync: fleet::ReplicaOptions,
    },
}

/// `cellar fleet ...`.
#[derive(Subcommand, Debug)]
enum FleetCommand {
    /// Start a fresh local subnet of replica processes on loopback.
    Up {
        /// How many replicas.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Where the fleet keeps its files (default: a temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// One-way delay injected between replicas (ms).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Test only: the last replica misbehaves (equivocate, bad-shares,
        /// garbage).
        #[arg(long, hide = true)]
        byzantine: Option<String>,
        /// The consensus policy every replica runs: icc (the embedded
        /// component, default), round-robin, native-icc.
        #[arg(long)]
        consensus_policy: Option<String>,
        #[command(flatten)]
        sync: fleet::ReplicaOptions,
    },
    /// Stop the replicas of a fleet.
    Down {
        /// The fleet's directory (default: the temp dir `up` uses).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `cellar identity ...`.
#[derive(Subcommand, Debug)]
enum IdentityCommand {
    /// Create a new identity (a random Ed25519 key, mode 0600).
    New {
        /// Its name.
        name: String,
    },
    /// List identities; the current one is marked with `*`.
    List,
    /// Make an identity the current one.
    Use {
        /// Its name.
        name: String,
    },
    /// Show the current identity's name and principal.
    Show,
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
    /// Queries and updates per second through HTTP on loopback against the
    /// same calls in-process, with p50/p99 latency.
    Api(bench_api::ApiBenchArgs),
    /// Update throughput, p50/p99 latency and blocks per second through a
    /// local subnet of replica processes, with and without injected delay.
    Fleet(bench_fleet::FleetBenchArgs),
    /// State sync of a large checkpoint between two nodes in process: full,
    /// then incremental after k pages changed.
    Sync(bench_sync::SyncBenchArgs),
}

/// Arguments of `call` and `query`.
#[derive(clap::Args, Debug)]
struct CallArgs {
    /// The canister id.
    canister: Principal,
    /// The method and its WAVE arguments: `add("apple", 5)`, `get()` or `get`.
    #[arg(value_name = "METHOD(ARGS)")]
    call: String,
    /// The arguments as JSON (an array, or an object by name) instead of
    /// WAVE; the call text is then just the method name.
    #[arg(long, value_name = "JSON")]
    args_json: Option<String>,
    /// Updates: print the request id at once instead of waiting for the
    /// reply (see `cellar request`).
    #[arg(long)]
    no_wait: bool,
}

/// `http://` + [`DEFAULT_LISTEN`].
fn default_url() -> String {
    format!("http://{DEFAULT_LISTEN}")
}

/// The URLs to try, in order: a fleet's (its `urls.txt`), then `urls`
/// (the default one only when there is no fleet).
fn node_urls(urls: &[String], fleet: Option<&std::path::Path>) -> Result<Vec<String>> {
    let mut all = Vec::new();
    if let Some(dir) = fleet {
        let path = dir.join("urls.txt");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (is the fleet up?)", path.display()))?;
        all.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
        if urls != [default_url()] {
            all.extend(urls.iter().cloned());
        }
    } else {
        all.extend(
            urls.iter()
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty()),
        );
    }
    anyhow::ensure!(!all.is_empty(), "no node URL given");
    Ok(all)
}

fn main() -> ExitCode {
    // Output piped into a command that stops reading (`cellar status |
    // head`) ends the process quietly, as for other command-line tools,
    // instead of a panic on the broken pipe.
    // SAFETY: restoring a signal's default disposition at start-up, before
    // any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The identity requests are signed with: `--identity FILE`, else the
/// current identity of the store.
fn load_identity(file: Option<&PathBuf>) -> Result<Identity> {
    match file {
        Some(path) => Ok(Identity::load_or_create(path)?),
        None => Ok(identity::Store::open_default().load_current()?.1),
    }
}

/// Runs one command.
fn run(cli: Cli) -> Result<()> {
    let out = Output { json: cli.json };
    match cli.command {
        Command::Start {
            data_dir,
            listen,
            memory_tracker,
            checkpoint_interval,
        } => {
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
            start::run(settings, load_identity(cli.identity.as_ref())?)
        }
        Command::Bench(BenchCommand::Memory(args)) => bench::memory(&args, cli.json),
        Command::Bench(BenchCommand::Api(args)) => bench_api::run(&args, cli.json),
        Command::Bench(BenchCommand::Fleet(args)) => bench_fleet::run(&args, cli.json),
        Command::Bench(BenchCommand::Sync(args)) => bench_sync::run(&args, cli.json),
        Command::Bench(BenchCommand::Scheduler(args)) => {
            bench_scheduler::scheduler(&args, cli.json)
        }
        Command::Subnet(SubnetCommand::New {
            nodes,
            out,
            consensus_policy,
            checkpoint_interval,
        }) => {
            let addresses = fleet::parse_nodes(&nodes)?;
            fleet::subnet_new(
                &addresses,
                &out,
                consensus_policy.as_deref(),
                checkpoint_interval,
            )?;
            println!(
                "wrote {} and {} key files to {}",
                fleet::GENESIS_FILE,
                addresses.len(),
                out.display()
            );
            Ok(())
        }
        Command::Node(NodeCommand::Start {
            config,
            key,
            data_dir,
            listen,
            delay_ms,
            byzantine,
            sync,
        }) => fleet::node_start(&config, &key, data_dir, listen, delay_ms, byzantine, sync),
        Command::Fleet(FleetCommand::Up {
            nodes,
            dir,
            delay_ms,
            byzantine,
            consensus_policy,
            sync,
        }) => {
            let dir = dir.unwrap_or_else(fleet::default_dir);
            if let Some(fault) = &byzantine {
                fault.parse::<fleet::Fault>().map_err(anyhow::Error::msg)?;
            }
            let urls = fleet::fleet_up(
                nodes,
                &dir,
                delay_ms,
                byzantine.as_deref(),
                consensus_policy.as_deref(),
                sync,
            )?;
            for url in &urls {
                println!("{url}");
            }
            eprintln!(
                "fleet of {} replicas up; files in {}",
                urls.len(),
                dir.display()
            );
            Ok(())
        }
        Command::Fleet(FleetCommand::Down { dir }) => {
            let dir = dir.unwrap_or_else(fleet::default_dir);
            let n = fleet::fleet_down(&dir)?;
            println!("stopped {n} replicas");
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cellar", &mut std::io::stdout());
            Ok(())
        }
        Command::New(args) => project::new(&args, out),
        Command::Build { project } => project::build(&project, out).map(|_| ()),
        Command::Identity(command) => identity_command(command, cli.identity.as_ref(), out),
        command => {
            let urls = node_urls(&cli.url, cli.fleet.as_deref())?;
            let agent = Agent::with_urls(
                &urls,
                load_identity(cli.identity.as_ref())?,
                cellar_agent::AgentOptions::default(),
            );
            client_command(&agent, command, out)
        }
    }
}

/// The commands that talk to a node.
fn client_command(agent: &Agent, command: Command, out: Output) -> Result<()> {
    match command {
        Command::Deploy {
            module: Some(module),
            arg,
            ..
        } => commands::deploy(agent, &module, arg, out),
        Command::Deploy {
            module: None,
            arg,
            project,
        } => project::deploy(agent, &project, arg, out),
        Command::Call(a) => call(agent, CallKind::Update, a, out),
        Command::Query(a) => call(agent, CallKind::Query, a, out),
        Command::Request { request_id, wait } => commands::request(agent, &request_id, wait, out),
        Command::Upgrade {
            canister,
            module,
            arg,
        } => commands::upgrade(agent, &canister, &module, arg, out),
        Command::Status { canister } => commands::status(agent, canister.as_ref(), out),
        Command::Describe { canister } => commands::describe(agent, &canister, out),
        Command::Logs { canister } => commands::logs(agent, &canister, out),
        Command::Canister(command) => canister::run(agent, command, out),
        Command::Policy(command) => canister::policy(agent, command, out),
        _ => unreachable!("handled in run"),
    }
}

/// `cellar identity ...`.
fn identity_command(command: IdentityCommand, file: Option<&PathBuf>, out: Output) -> Result<()> {
    let store = identity::Store::open_default();
    match command {
        IdentityCommand::New { name } => {
            let identity = store.create(&name)?;
            out.value(
                &serde_json::json!({"name": name, "principal": identity.principal()}),
                || format!("created identity `{name}`: {}", identity.principal()),
            )
        }
        IdentityCommand::List => {
            let current = store.current();
            let names = store.list()?;
            let rows: Vec<serde_json::Value> = names
                .iter()
                .map(|n| {
                    let principal = store.load(n).ok().map(|i| i.principal().to_text());
                    serde_json::json!({"name": n, "current": *n == current, "principal": principal})
                })
                .collect();
            out.value(&rows, || {
                rows.iter()
                    .map(|r| {
                        let mark = if r["current"] == true { "*" } else { " " };
                        format!(
                            "{mark} {:<16} {}",
                            r["name"].as_str().unwrap_or_default(),
                            r["principal"].as_str().unwrap_or("(unreadable)")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        IdentityCommand::Use { name } => {
            store.set_current(&name)?;
            let identity = store.load(&name)?;
            out.value(
                &serde_json::json!({"name": name, "principal": identity.principal()}),
                || format!("using identity `{name}`: {}", identity.principal()),
            )
        }
        IdentityCommand::Show => {
            let (name, identity) = match file {
                Some(path) => (path.display().to_string(), Identity::load_or_create(path)?),
                None => store.load_current()?,
            };
            out.value(
                &serde_json::json!({"name": name, "principal": identity.principal()}),
                || format!("{name}\n{}", identity.principal()),
            )
        }
    }
}

/// Dispatches `call`/`query`.
fn call(agent: &Agent, kind: CallKind, a: CallArgs, out: Output) -> Result<()> {
    commands::call(
        agent,
        kind,
        &a.canister,
        &a.call,
        a.args_json.as_deref(),
        a.no_wait,
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(cli.url, ["http://127.0.0.1:7171"]);
        let two = Cli::try_parse_from([
            "cellar",
            "--url",
            "http://127.0.0.1:1",
            "--url",
            "http://127.0.0.1:2,http://127.0.0.1:3",
            "status",
        ])
        .unwrap();
        assert_eq!(
            node_urls(&two.url, None).unwrap(),
            [
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:3"
            ]
        );
        assert_eq!(
            Cli::try_parse_from(["cellar", "status"]).unwrap().url,
            [default_url()]
        );
        assert!(cli.json);
        assert!(matches!(cli.command, Command::Call(_)));
        for args in [
            &["cellar", "status"][..],
            &["cellar", "start", "--listen", "127.0.0.1:7171"],
            &["cellar", "canister", "list"],
            &["cellar", "canister", "controllers", &id, "--add", &id],
            &["cellar", "identity", "use", "ci"],
            &["cellar", "new", "hello", "--lang", "python"],
            &["cellar", "deploy"],
            &["cellar", "completions", "bash"],
            &["cellar", "bench", "api", "--clients", "4"],
        ] {
            assert!(Cli::try_parse_from(args).is_ok(), "{args:?}");
        }
        assert!(Cli::try_parse_from(["cellar", "logs", "not-a-principal"]).is_err());
        assert!(Cli::try_parse_from(["cellar", "new", "x", "--lang", "cobol"]).is_err());
    }
}
