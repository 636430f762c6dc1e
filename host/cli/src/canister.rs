//! `cellar canister list|status|stop|start|delete|top-up|controllers|chunks` and
//! `cellar policy show|set`.

use anyhow::{Result, bail};
use cellar_agent::Agent;
use cellar_types::Principal;
use cellar_types::api::ModuleSource;
use clap::Subcommand;

use crate::commands::{canister_details, canister_table};
use crate::output::Output;

/// The canister management commands.
#[derive(Subcommand, Debug)]
pub enum CanisterCommand {
    /// List the node's canisters.
    List,
    /// Show a canister's status.
    Status {
        /// The canister id.
        canister: Principal,
    },
    /// Stop a canister: calls are rejected until it is started.
    Stop {
        /// The canister id.
        canister: Principal,
    },
    /// Start a stopped canister.
    Start {
        /// The canister id.
        canister: Principal,
    },
    /// Delete a canister (it must be stopped first).
    Delete {
        /// The canister id.
        canister: Principal,
    },
    /// Add cycles to a canister's balance (unfreezes a canister that ran dry).
    TopUp {
        /// The canister id.
        canister: Principal,
        /// Cycles to add.
        cycles: u64,
    },
    /// Show or change a canister's controllers.
    Controllers {
        /// The canister id.
        canister: Principal,
        /// Add a controller.
        #[arg(long, value_name = "PRINCIPAL")]
        add: Vec<Principal>,
        /// Remove a controller.
        #[arg(long, value_name = "PRINCIPAL")]
        remove: Vec<Principal>,
        /// Replace the controllers with these.
        #[arg(long, value_name = "PRINCIPAL", conflicts_with_all = ["add", "remove"])]
        set: Vec<Principal>,
    },
    /// Show (or, with --clear, empty) a canister's chunk store: the chunks
    /// of a module too large for one request, uploaded by `deploy` and
    /// `upgrade` and emptied by the install that uses them.
    Chunks {
        /// The canister id.
        canister: Principal,
        /// Empty the store (an interrupted upload's chunks).
        #[arg(long)]
        clear: bool,
    },
}

/// Runs one canister command.
pub fn run(agent: &Agent, command: CanisterCommand, out: Output) -> Result<()> {
    let status = match command {
        CanisterCommand::List => {
            let list = agent.canisters()?;
            return out.value(&list, || {
                if list.is_empty() {
                    format!(
                        "no canisters: deploy one with `{} deploy kv`",
                        crate::invocation::cellar()
                    )
                } else {
                    canister_table(&list)
                }
            });
        }
        CanisterCommand::Status { canister } => {
            let status = agent.canister_status(&canister)?;
            // The read-state answer, checked against the node's key.
            let certified = agent.read_state_certified(&canister);
            return out.value(&status, || {
                let mut text = canister_details(&status);
                match &certified {
                    Ok(state) => text.push_str(&format!(
                        "read state   certified by the node (round {}, state hash {})",
                        state.round, state.state_hash
                    )),
                    Err(e) => text.push_str(&format!("read state   NOT certified: {e}")),
                }
                text
            });
        }
        CanisterCommand::Chunks { canister, clear } => {
            let list = if clear {
                agent.clear_chunks(&canister)?
            } else {
                agent.chunks(&canister)?
            };
            return out.value(&list, || {
                if list.hashes.is_empty() {
                    "the chunk store is empty".to_string()
                } else {
                    list.hashes.join("\n")
                }
            });
        }
        CanisterCommand::Stop { canister } => agent.stop(&canister)?,
        CanisterCommand::Start { canister } => agent.start(&canister)?,
        CanisterCommand::Delete { canister } => agent.delete(&canister)?,
        CanisterCommand::TopUp { canister, cycles } => agent.top_up(&canister, cycles)?,
        CanisterCommand::Controllers {
            canister,
            add,
            remove,
            set,
        } => {
            let current = agent.canister_status(&canister)?;
            let new = if !set.is_empty() {
                Some(set)
            } else if add.is_empty() && remove.is_empty() {
                None
            } else {
                let mut list = current.controllers.clone();
                for p in add {
                    if !list.contains(&p) {
                        list.push(p);
                    }
                }
                list.retain(|p| !remove.contains(p));
                if list.is_empty() {
                    bail!("a canister keeps at least one controller");
                }
                Some(list)
            };
            let status = match new {
                Some(list) => agent.set_controllers(&canister, list)?,
                None => current,
            };
            return out.value(&status.controllers, || {
                status
                    .controllers
                    .iter()
                    .map(Principal::to_text)
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    };
    out.value(&status, || canister_details(&status))
}

/// `cellar policy ...`: which policies the node runs.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Show the policies in force and the last time one failed.
    Show,
    /// Replace a policy; it applies from the next round on.
    Set {
        /// Which policy: `scheduler`, or `consensus` (on a replica of a
        /// subnet: ordered by consensus, every replica switches at the
        /// same height).
        #[arg(value_parser = ["scheduler", "consensus"])]
        kind: String,
        /// A policy component file (`.wasm`), a shipped policy
        /// (scheduler: `round-robin`, `accumulated-priority`, `builtin`;
        /// consensus: `icc`, `round-robin`).
        policy: String,
    },
}

/// Runs one policy command.
pub fn policy(agent: &Agent, command: PolicyCommand, out: Output) -> Result<()> {
    let info = match command {
        PolicyCommand::Show => agent.policy()?,
        PolicyCommand::Set { kind, policy } if kind == "consensus" => {
            let module = if policy.ends_with(".wasm") || std::path::Path::new(&policy).exists() {
                let bytes = std::fs::read(&policy)
                    .map_err(|e| anyhow::anyhow!("cannot read {policy}: {e}"))?;
                ModuleSource::Wasm(data_encoding::BASE64.encode(&bytes))
            } else {
                ModuleSource::Example(policy)
            };
            agent.set_consensus_policy(module)?
        }
        PolicyCommand::Set { policy, .. } => {
            let module = match policy.as_str() {
                "builtin" => None,
                name if !name.ends_with(".wasm") && !std::path::Path::new(name).exists() => {
                    Some(ModuleSource::Example(name.to_string()))
                }
                path => {
                    let bytes = std::fs::read(path)
                        .map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?;
                    Some(ModuleSource::Wasm(data_encoding::BASE64.encode(&bytes)))
                }
            };
            agent.set_scheduler_policy(module)?
        }
    };
    out.value(&info, || {
        let mut text = format!(
            "scheduler policy: {}",
            info.scheduler_module_hash
                .as_deref()
                .map_or("built-in accumulated priority".to_string(), |h| format!(
                    "component {h}"
                ))
        );
        if let Some(consensus) = &info.consensus {
            text.push_str(&format!("\nconsensus policy: {consensus}"));
        }
        if let (Some(round), Some(reason)) = (info.last_fallback_round, &info.last_fallback_reason)
        {
            text.push_str(&format!(
                "\nlast failure: round {round}: {reason} (the built-in ran)"
            ));
        }
        text
    })
}
