//! The dashboard in a real headless Chromium (Debian's `chromium`, installed
//! by `scripts/install-chromium.sh` when missing): the page served by a
//! node loads, polls the node, and shows numbers that move after calls.
//!
//! The page is loaded with `--dump-dom` and a virtual-time budget, so its
//! 1-second polling runs several times without waiting; the test reads the
//! `data-value` attributes the page writes.

use std::path::{Path, PathBuf};
use std::process::Command;

use cellar_agent::{Agent, Identity};
use cellar_types::api::CallRequest;

/// The browser, installed if needed; `None` when it cannot be had.
fn chromium() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-chromium.sh");
    let output = Command::new("bash").arg(script).output().ok()?;
    if !output.status.success() {
        eprintln!(
            "SKIPPED: chromium is not installed and cannot be installed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    Some(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    ))
}

/// The page's DOM after a few seconds of virtual time.
fn load(browser: &Path, url: &str, profile: &Path) -> String {
    let output = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The `data-value` of the element with id `id`.
fn value(dom: &str, id: &str) -> f64 {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in\n{dom}"));
    let rest = &dom[at..];
    let start = rest.find("data-value=\"").expect("a data-value") + "data-value=\"".len();
    let end = rest[start..].find('"').unwrap();
    rest[start..start + end].parse().unwrap()
}

/// The points of the first polyline after `id`.
fn chart_points(dom: &str, id: &str) -> usize {
    let at = dom.find(&format!("id=\"{id}\"")).expect("the chart");
    let rest = &dom[at..];
    let start = rest.find("points=\"").unwrap() + "points=\"".len();
    let end = rest[start..].find('"').unwrap();
    rest[start..start + end].split_whitespace().count()
}

#[test]
fn dashboard_shows_the_node_moving_in_chromium() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let me = Identity::from_seed([3; 32]);
    let mut config =
        cellar_node::NodeConfig::new(dir.path().join("node"), "127.0.0.1:0".parse().unwrap());
    config.example_controllers = vec![me.principal().clone()];
    let running = runtime.block_on(cellar_node::start(config)).unwrap();
    let url = format!("http://{}", running.addr);
    let kv = running.examples[1].1.clone();
    let agent = Agent::new(&url, me);
    for i in 0..3 {
        agent
            .call(&kv, &CallRequest::wave("add", &format!("\"a{i}\", {i}")))
            .unwrap();
    }
    agent
        .query(&kv, &CallRequest::wave("get", "\"a1\""))
        .unwrap();

    let page = format!("{url}/dashboard");
    let first = load(&browser, &page, &dir.path().join("profile-1"));
    assert!(value(&first, "polls") >= 2.0, "the page polled:\n{first}");
    assert_eq!(value(&first, "canister-count"), 4.0);
    assert_eq!(value(&first, "updates"), 3.0);
    assert_eq!(value(&first, "queries"), 1.0);
    assert!(value(&first, "memory") > 0.0);
    assert!(first.contains(&kv.to_text()), "{first}");
    let round = value(&first, "round");

    for i in 0..5 {
        agent
            .call_and_wait(&kv, &CallRequest::wave("add", &format!("\"b{i}\", {i}")))
            .unwrap();
    }
    let second = load(&browser, &page, &dir.path().join("profile-2"));
    assert_eq!(value(&second, "updates"), 8.0, "{second}");
    assert!(value(&second, "round") >= round + 5.0);
    assert!(second.contains("<td>add</td>"), "recent calls:\n{second}");
    assert!(second.contains("<td>get</td>"), "recent calls:\n{second}");
    assert!(chart_points(&second, "chart-rounds") >= 1, "{second}");
    assert!(chart_points(&second, "chart-messages") >= 1, "{second}");

    runtime.block_on(running.shutdown()).unwrap();
}
