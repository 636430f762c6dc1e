//! The client commands (deploy, call, query, request, upgrade, status,
//! describe, logs): each talks to a node through an [`Agent`] and prints
//! the outcome.
//!
//! `cellar deploy` of a module too large for one request creates an empty
//! canister first and installs the module through its chunk store (the
//! empty canister is deleted again when the install fails).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use cellar_types::Principal;
use cellar_types::api::{
    Args, CallRequest, CallResponse, CanisterStatus, CreateRequest, InstallMode, InstallRequest,
    MAX_CHUNK_BYTES, ModuleSource, ReplyEncoding,
};
use data_encoding::BASE64;

use cellar_agent::{Agent, AgentError};

use crate::call_text;
use crate::output::Output;
use crate::progress::Steps;
use crate::render;

/// Update call or query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `POST .../call`.
    Update,
    /// `POST .../query`.
    Query,
}

/// `cellar deploy`: creates a canister with the module and prints its id.
pub fn deploy(agent: &Agent, module: &str, arg: Option<String>, out: Output) -> Result<()> {
    let steps = Steps::new(2);
    steps.step(&format!("reading {module}"));
    let source = module_source(module)?;
    let status = create_with(agent, source, arg, &steps)?;
    steps.finish();
    print_deployed(&status, out)
}

/// Creates a canister with `source` installed, as a step of `steps`. A
/// module too large for one request goes through the new canister's chunk
/// store; when its install fails the empty canister is deleted again.
pub fn create_with(
    agent: &Agent,
    source: ModuleSource,
    arg: Option<String>,
    steps: &Steps,
) -> Result<CanisterStatus> {
    let wasm = match &source {
        ModuleSource::Wasm(b64) => Some(BASE64.decode(b64.as_bytes())?),
        _ => None,
    };
    let size = match &wasm {
        Some(wasm) => render::bytes(wasm.len() as u64),
        None => "example".to_string(),
    };
    let Some(wasm) = wasm.filter(|w| w.len() > cellar_agent::INLINE_MODULE_BYTES) else {
        steps.step(&format!(
            "creating the canister and installing the code ({size})"
        ));
        let request = CreateRequest {
            module: Some(source),
            arg,
            controllers: vec![],
        };
        return Ok(agent.create(&request)?);
    };
    steps.step(&format!("creating the canister for the code ({size})"));
    let created = agent.create(&CreateRequest::default())?;
    let id = created.canister_id;
    match install_in_chunks(agent, &id, InstallMode::Install, &wasm, arg, steps) {
        Ok(status) => Ok(status),
        Err(e) => {
            if let Err(cleanup) = agent.delete(&id) {
                tracing::warn!("the empty canister {id} stays: {cleanup}");
            }
            Err(e)
        }
    }
}

/// Installs `wasm` through the canister's chunk store, reporting each
/// uploaded chunk as a step.
fn install_in_chunks(
    agent: &Agent,
    id: &Principal,
    mode: InstallMode,
    wasm: &[u8],
    arg: Option<String>,
    steps: &Steps,
) -> Result<CanisterStatus> {
    steps.add(wasm.len().div_ceil(MAX_CHUNK_BYTES) as u64);
    let status = agent.install_module(id, mode, wasm, arg, |done, total| {
        steps.step(&format!("uploaded chunk {done} of {total}"));
    })?;
    Ok(status)
}

/// Prints a deployed canister: its id, or its status as JSON.
pub fn print_deployed(status: &CanisterStatus, out: Output) -> Result<()> {
    out.value(status, || status.canister_id.to_text())
}

/// `cellar upgrade`: upgrades the canister's code, keeping stable memory.
pub fn upgrade(
    agent: &Agent,
    canister: &Principal,
    module: &str,
    arg: Option<String>,
    out: Output,
) -> Result<()> {
    let steps = Steps::new(2);
    steps.step(&format!("reading {module}"));
    let module = module_source(module)?;
    steps.step("upgrading the canister");
    let status = upgrade_with(agent, canister, module, arg, &steps)?;
    steps.finish();
    out.value(&status, || {
        format!(
            "upgraded {} (module {})",
            status.canister_id,
            status.module_hash.as_deref().unwrap_or("none")
        )
    })
}

/// Upgrades `canister` to `module` (through its chunk store when the
/// module is too large for one request), as a step of `steps`.
pub fn upgrade_with(
    agent: &Agent,
    canister: &Principal,
    module: ModuleSource,
    arg: Option<String>,
    steps: &Steps,
) -> Result<CanisterStatus> {
    if let ModuleSource::Wasm(b64) = &module {
        let wasm = BASE64.decode(b64.as_bytes())?;
        if wasm.len() > cellar_agent::INLINE_MODULE_BYTES {
            return install_in_chunks(agent, canister, InstallMode::Upgrade, &wasm, arg, steps);
        }
    }
    let request = InstallRequest {
        mode: InstallMode::Upgrade,
        module,
        arg,
    };
    Ok(agent.install(canister, &request)?)
}

/// `cellar call` and `cellar query`: sends the message and prints the reply.
/// `args_json`, when given, replaces the WAVE arguments of `text`; `--json`
/// asks for the reply as JSON. Updates are submitted and polled; with
/// `no_wait` the request id is printed at once.
pub fn call(
    agent: &Agent,
    kind: CallKind,
    canister: &Principal,
    text: &str,
    args_json: Option<&str>,
    no_wait: bool,
    out: Output,
) -> Result<()> {
    let json = out.json;
    let parsed = call_text::parse(text)?;
    let args = match args_json {
        None => Args::Wave(parsed.args),
        Some(_) if !parsed.args.is_empty() => {
            bail!("give the arguments either in `{text}` or with --args-json, not both")
        }
        Some(raw) => {
            let value: serde_json::Value =
                serde_json::from_str(raw).context("--args-json is not valid JSON")?;
            if !(value.is_array() || value.is_object()) {
                bail!("--args-json takes an array of arguments or an object by name");
            }
            Args::Json(value)
        }
    };
    let request = CallRequest {
        method: parsed.method,
        args,
        reply_encoding: if json {
            ReplyEncoding::Json
        } else {
            ReplyEncoding::Wave
        },
        cycles: 0,
    };
    let response = match kind {
        CallKind::Update if no_wait => {
            let request_id = agent.submit(canister, &request)?;
            return out.value(&serde_json::json!({ "request_id": request_id }), || {
                request_id.clone()
            });
        }
        CallKind::Update => {
            let request_id = agent.submit(canister, &request)?;
            agent.wait(&request_id)?
        }
        CallKind::Query => agent.query(canister, &request)?,
    };
    print_response(response, json)
}

/// Prints a reply, or fails with the reject.
fn print_response(response: CallResponse, json: bool) -> Result<()> {
    match cellar_agent::replied(response) {
        Ok(reply) => {
            let text = render_reply(&reply, json)?;
            if !text.is_empty() {
                println!("{text}");
            }
            Ok(())
        }
        Err(e @ AgentError::Rejected(_)) => bail!("{e}"),
        Err(e) => Err(e.into()),
    }
}

/// `cellar request`: a submitted request's status, and its reply when done;
/// with `wait`, polls until it is done and prints its reply as `call` does.
pub fn request(agent: &Agent, request_id: &str, wait: bool, out: Output) -> Result<()> {
    if wait {
        let response = agent.wait(request_id)?;
        if out.json {
            return out.value(&response, String::new);
        }
        return print_response(response, false);
    }
    let status = agent.request_status(request_id)?;
    if out.json {
        return out.value(&status, String::new);
    }
    let state = serde_json::to_value(status.status)?;
    println!("{}", state.as_str().unwrap_or("unknown"));
    match status.response {
        Some(response) => print_response(response, false),
        None => Ok(()),
    }
}

/// The reply as printed: WAVE text as is, JSON pretty-printed.
fn render_reply(reply: &serde_json::Value, json: bool) -> Result<String> {
    Ok(match reply {
        serde_json::Value::String(wave) if !json => wave.clone(),
        other => serde_json::to_string_pretty(other)?,
    })
}

/// `cellar status`: the node and its canisters, or one canister.
pub fn status(agent: &Agent, canister: Option<&Principal>, out: Output) -> Result<()> {
    if let Some(id) = canister {
        let status = agent.canister_status(id)?;
        return out.value(&status, || canister_details(&status));
    }
    let node = agent.status()?;
    let canisters = agent.canisters()?;
    if out.json {
        return out.value(
            &serde_json::json!({"node": node, "canisters": canisters}),
            String::new,
        );
    }
    println!("node       {}", agent.base_url());
    println!("version    {}", node.version);
    println!("round      {}", node.round);
    println!("state hash {}", node.state_hash);
    println!("data dir   {}", node.data_dir);
    println!("you        {}", agent.identity().principal());
    println!();
    if canisters.is_empty() {
        println!(
            "no canisters: deploy one with `{} deploy kv`",
            crate::invocation::cellar()
        );
        return Ok(());
    }
    print!("{}", canister_table(&canisters));
    Ok(())
}

/// The table of canisters.
pub fn canister_table(canisters: &[CanisterStatus]) -> String {
    let rows: Vec<Vec<String>> = canisters.iter().map(canister_row).collect();
    render::table(
        &[
            "CANISTER", "STATUS", "MODULE", "HEAP", "STABLE", "CYCLES", "UPDATES",
        ],
        &rows,
    )
}

/// One line of the canister table.
fn canister_row(c: &CanisterStatus) -> Vec<String> {
    vec![
        c.canister_id.to_text(),
        render::run_status(c.status).to_string(),
        c.module_hash
            .as_deref()
            .map_or("-".to_string(), |h| h.chars().take(12).collect()),
        render::bytes(c.heap_bytes),
        render::bytes(c.stable_bytes),
        render::grouped(c.cycles),
        c.updates.to_string(),
    ]
}

/// One canister's status, a field per line.
pub fn canister_details(c: &CanisterStatus) -> String {
    let controllers: Vec<String> = c.controllers.iter().map(Principal::to_text).collect();
    let mut out = String::new();
    let _ = writeln!(out, "canister     {}", c.canister_id);
    let _ = writeln!(out, "status       {}", render::run_status(c.status));
    let _ = writeln!(
        out,
        "module hash  {}",
        c.module_hash.as_deref().unwrap_or("none (empty canister)")
    );
    let _ = writeln!(out, "heap         {}", render::bytes(c.heap_bytes));
    let _ = writeln!(out, "stable       {}", render::bytes(c.stable_bytes));
    let _ = writeln!(out, "cycles       {}", render::grouped(c.cycles));
    let _ = writeln!(out, "updates      {}", c.updates);
    let _ = writeln!(
        out,
        "controllers  {}",
        if controllers.is_empty() {
            "none".to_string()
        } else {
            controllers.join("\n             ")
        }
    );
    if !c.certified_data.is_empty() {
        let _ = writeln!(out, "certified    {}", c.certified_data);
    }
    out
}

/// `cellar describe`: the canister's interface.
pub fn describe(agent: &Agent, canister: &Principal, out: Output) -> Result<()> {
    let info = agent.interface(canister)?;
    if out.json {
        return out.value(&info, String::new);
    }
    print!("{}", info.text);
    if !info.text.ends_with('\n') {
        println!();
    }
    Ok(())
}

/// `cellar logs`: the canister's log, one entry per line.
pub fn logs(agent: &Agent, canister: &Principal, out: Output) -> Result<()> {
    let entries = agent.logs(canister)?;
    if out.json {
        return out.value(&entries, String::new);
    }
    if entries.is_empty() {
        eprintln!("no log entries");
    }
    for e in entries {
        println!(
            "[{}] {:<5} {}",
            render::time(e.time_nanos),
            e.level.to_uppercase(),
            e.message.trim_end_matches('\n')
        );
    }
    Ok(())
}

/// Resolves `deploy`/`upgrade`'s module argument: a component file or the
/// name of an example.
pub fn module_source(spec: &str) -> Result<ModuleSource> {
    let path = Path::new(spec);
    if path.is_file() {
        let wasm =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if !wasm.starts_with(b"\0asm") {
            bail!("{} is not a WebAssembly component", path.display());
        }
        return Ok(ModuleSource::Wasm(BASE64.encode(&wasm)));
    }
    if cellar_examples::get(spec).is_some() {
        return Ok(ModuleSource::Example(spec.to_string()));
    }
    if spec.contains(std::path::MAIN_SEPARATOR) || spec.ends_with(".wasm") {
        bail!("cannot read {spec}: no such file");
    }
    let mut message = format!("`{spec}` is neither a file nor an example; the examples are:");
    for e in cellar_examples::examples() {
        let _ = write!(message, "\n  {:<8} {}", e.name, e.description);
    }
    bail!(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_resolve_to_examples_or_files() {
        assert_eq!(
            module_source("kv").unwrap(),
            ModuleSource::Example("kv".into())
        );
        let err = module_source("nope").unwrap_err().to_string();
        assert!(err.contains("counter") && err.contains("ledger"), "{err}");
        let err = module_source("missing.wasm").unwrap_err().to_string();
        assert!(err.contains("no such file"), "{err}");

        let path = std::env::temp_dir().join(format!("cellar-cli-{}.wasm", std::process::id()));
        std::fs::write(&path, b"\0asm\x0d\0\x01\0").unwrap();
        assert_eq!(
            module_source(path.to_str().unwrap()).unwrap(),
            ModuleSource::Wasm(BASE64.encode(b"\0asm\x0d\0\x01\0"))
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn replies_render_as_wave_or_json() {
        let wave = serde_json::json!("some(5)");
        assert_eq!(render_reply(&wave, false).unwrap(), "some(5)");
        let json = serde_json::json!({"ok": 5});
        assert_eq!(render_reply(&json, true).unwrap(), "{\n  \"ok\": 5\n}");
    }
}
