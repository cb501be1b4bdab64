//! The WebSocket plumbing shared by wsload's three binaries: `wsload` (the load generator),
//! `ws-echo` (the echo server of the tests, the demo and the benchmark) and `ws-client` (the
//! client that verifies echoes).
//!
//! One place for what they would otherwise each write: TLS with the ring provider only — the
//! insecure client verifier and the self-signed server certificate ([`tls`]) —, `ws://` and
//! `wss://` URLs ([`target`]), the WebSocket message limits ([`websocket`]), one-line error
//! messages ([`error_text`]) and the open-file limit ([`limits`]: many connections need many
//! descriptors, on both ends).

pub mod error_text;
pub mod limits;
pub mod target;
pub mod tls;
pub mod websocket;
