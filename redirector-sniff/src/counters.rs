//! What the sniffing proxy did, as monotonic counters shared by all connections.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

/// One counter of the sniffing proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Connections accepted (including those refused over `--max-conns` or
    /// `--max-conns-per-ip`).
    Accepted,
    /// Connections closed at once because `--max-conns` were already open.
    OverLimit,
    /// Connections closed at once because `--max-conns-per-ip` were already open from the
    /// same client (IPv4 address or IPv6 /64).
    OverIpLimit,
    /// Connections routed to the WebSocket backend.
    Websocket,
    /// Connections routed to the HTTP backend as HTTP.
    Http,
    /// Connections whose first bytes were not HTTP/1.x (closed or sent to the HTTP backend).
    NotHttp,
    /// Connections whose request head exceeded `--max-header-bytes`; closed.
    TooLarge,
    /// Connections that did not complete a request head within `--header-timeout`; closed.
    HeaderTimeout,
    /// Connections the client closed (or reset) before a decision.
    ClientClosedEarly,
    /// Backend connections that failed or timed out; the client was closed.
    BackendConnectFailed,
    /// Relays ended because no byte moved for `--idle-timeout`.
    IdleTimeout,
    /// Relays ended by a socket error (e.g. a reset).
    RelayError,
    /// Bytes relayed from clients to backends (finished relays, including the sniffed prefix).
    BytesClientToBackend,
    /// Bytes relayed from backends to clients (finished relays).
    BytesBackendToClient,
    /// `accept(2)` failures of the listener (e.g. out of file descriptors).
    AcceptError,
    /// TLS connections whose server name matched `--ws-sni`.
    TlsWebsocket,
    /// TLS connections routed to `--tls-http` (other names, or none).
    TlsHttp,
    /// Connections on the TLS listener that did not start with a ClientHello; closed.
    NotTls,
    /// Relay rounds (one read and the writes of all of it) that moved bytes with
    /// `splice(2)` through a pipe, never entering user space.
    RelaySplice,
    /// Relay rounds that moved bytes by copying through a buffer (`--relay copy`, small
    /// rounds of `auto`, and a `splice` round that could get no pipe).
    RelayCopy,
}

impl Counter {
    /// Number of counters.
    pub const COUNT: usize = 20;

    /// Every counter, in printing order.
    pub const ALL: [Counter; Self::COUNT] = [
        Counter::Accepted,
        Counter::OverLimit,
        Counter::OverIpLimit,
        Counter::Websocket,
        Counter::Http,
        Counter::NotHttp,
        Counter::TooLarge,
        Counter::HeaderTimeout,
        Counter::ClientClosedEarly,
        Counter::BackendConnectFailed,
        Counter::IdleTimeout,
        Counter::RelayError,
        Counter::BytesClientToBackend,
        Counter::BytesBackendToClient,
        Counter::AcceptError,
        Counter::TlsWebsocket,
        Counter::TlsHttp,
        Counter::NotTls,
        Counter::RelaySplice,
        Counter::RelayCopy,
    ];

    /// Stable name, as printed.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Accepted => "accepted",
            Counter::OverLimit => "over_limit",
            Counter::OverIpLimit => "over_ip_limit",
            Counter::Websocket => "websocket",
            Counter::Http => "http",
            Counter::NotHttp => "not_http",
            Counter::TooLarge => "too_large",
            Counter::HeaderTimeout => "header_timeout",
            Counter::ClientClosedEarly => "client_closed_early",
            Counter::BackendConnectFailed => "backend_connect_failed",
            Counter::IdleTimeout => "idle_timeout",
            Counter::RelayError => "relay_error",
            Counter::BytesClientToBackend => "bytes_client_to_backend",
            Counter::BytesBackendToClient => "bytes_backend_to_client",
            Counter::AcceptError => "accept_error",
            Counter::TlsWebsocket => "tls_websocket",
            Counter::TlsHttp => "tls_http",
            Counter::NotTls => "not_tls",
            Counter::RelaySplice => "relay_splice",
            Counter::RelayCopy => "relay_copy",
        }
    }
}

/// The live counters (relaxed atomics: each is independent, read only for reporting).
#[derive(Debug, Default)]
pub struct Counters {
    values: [AtomicU64; Counter::COUNT],
}

impl Counters {
    /// Adds one to `counter`.
    pub fn inc(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Adds `n` to `counter`.
    pub fn add(&self, counter: Counter, n: u64) {
        self.values[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Sets `counter` to `value` (a copy of another process's counters, e.g. the loader
    /// mirroring its unprivileged proxy child).
    pub fn set(&self, counter: Counter, value: u64) {
        self.values[counter as usize].store(value, Ordering::Relaxed);
    }

    /// Current value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize].load(Ordering::Relaxed)
    }
}

impl fmt::Display for Counters {
    /// One `sniff counter NAME=VALUE` line per counter, stable for scripts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for counter in Counter::ALL {
            writeln!(f, "sniff counter {}={}", counter.name(), self.get(counter))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_counter_at_its_index() {
        for (i, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, i);
        }
    }

    #[test]
    fn renders_one_line_per_counter() {
        let counters = Counters::default();
        counters.inc(Counter::Websocket);
        counters.add(Counter::BytesClientToBackend, 42);
        let text = counters.to_string();
        assert_eq!(text.lines().count(), Counter::COUNT);
        assert!(text.contains("sniff counter websocket=1\n"));
        assert!(text.contains("sniff counter bytes_client_to_backend=42\n"));
        assert!(text.contains("sniff counter http=0\n"));
    }
}
