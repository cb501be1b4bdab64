//! WebSocket settings every binary shares: the largest message and frame, so that what
//! `ws-client` and `wsload` may send, `ws-echo` accepts and echoes.

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Largest message and frame accepted (the tests send 1 MiB messages; benchmarks may send
/// more).
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Settings with the message and frame limits set to [`MAX_MESSAGE_SIZE`], the rest default.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE))
}
