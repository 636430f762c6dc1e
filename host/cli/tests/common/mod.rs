//! Helpers the `cellar` binary's end-to-end tests share: the binary, a node
//! process killed however the test ends, free ports, exit-status checks.

// Each test crate uses its own subset.
#![allow(dead_code)]

use std::process::{Child, Output};

/// The binary under test: `CELLAR_TEST_BIN` when set (a copy of the build
/// that a shared target directory cannot replace mid-run), else cargo's.
pub static CELLAR: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("CELLAR_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cellar").to_string())
});

/// Kills the node when the test ends, however it ends.
pub struct NodeProcess(pub Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nobody listens on (now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The trimmed stdout of a command that must have succeeded.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The stderr of a command that must have failed.
pub fn failed(output: Output) -> String {
    assert!(!output.status.success(), "unexpectedly succeeded");
    String::from_utf8(output.stderr).unwrap()
}
