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
