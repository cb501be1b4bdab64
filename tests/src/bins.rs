//! Paths of the binaries under test (set by `cargo xtask test`, else the release build).

use std::path::PathBuf;

fn locate(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release")
        .join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo xtask test`, or build with `cargo build --release --bins` and set {env}",
        path.display()
    );
    path
}

/// The `redirector` loader.
pub fn redirector() -> PathBuf {
    locate("REDIRECTOR_BIN", "redirector")
}

/// The WebSocket echo server.
pub fn ws_echo() -> PathBuf {
    locate("WS_ECHO_BIN", "ws-echo")
}

/// The WebSocket client.
pub fn ws_client() -> PathBuf {
    locate("WS_CLIENT_BIN", "ws-client")
}

/// The WebSocket load generator.
pub fn wsload() -> PathBuf {
    locate("WSLOAD_BIN", "wsload")
}

/// The kernel-side benchmark.
pub fn kernel_bench() -> PathBuf {
    locate("KERNEL_BENCH_BIN", "kernel-bench")
}

/// The spoofed-SYN generator of the flood test.
pub fn syn_flood() -> PathBuf {
    locate("SYN_FLOOD_BIN", "syn-flood")
}

/// The blind attacker of the flow-integrity test (spoofed RST, FIN and SYN on known
/// connections).
pub fn tcp_spoof() -> PathBuf {
    locate("TCP_SPOOF_BIN", "tcp-spoof")
}

/// The sandbox of a systemd unit without systemd (tests/tests/unit_sandbox.rs).
pub fn unit_sandbox() -> PathBuf {
    locate("UNIT_SANDBOX_BIN", "unit-sandbox")
}

/// The loader's OCI image (`cargo xtask image`; set by `cargo xtask test`), in podman's
/// local storage.
pub fn image() -> String {
    std::env::var("REDIRECTOR_IMAGE").unwrap_or_else(|_| "localhost/redirector:latest".into())
}

/// The pinned kubernetes-validate that `cargo xtask setup` installs in its venv.
pub fn kubernetes_validate() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBERNETES_VALIDATE_BIN") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set");
    PathBuf::from(home).join(".local/share/redirector/venv/bin/kubernetes-validate")
}
