//! redirector-sniff: the user-space TCP proxy of `redirector sniff` (and of
//! `redirector run --sniff-listen`), which tells WebSocket upgrades from plain HTTP by reading
//! the start of each connection, then relays it to the matching backend.
//!
//! - [`detect`]: the pure decision over the bytes read so far;
//! - [`prefixed`]: a stream that replays those bytes to the backend;
//! - [`sni`]: the server name of a TLS ClientHello, for the TLS listener;
//! - [`proxy_protocol`]: PROXY protocol headers sent to backends;
//! - [`relay`]: the generic bidirectional copy and the idle timeout;
//! - [`splice`]: the relay of sockets (copy, `splice(2)` or both), with buffers and pipes
//!   lent per round by [`pool`] and [`pipe`], so idle connections hold neither;
//! - [`per_ip`]: connections open per client address, for `--max-conns-per-ip`;
//! - [`server`]: accept loop, limits, timeouts and routing;
//! - [`fd_limit`]: the open-file limit raised to what `--max-conns` needs;
//! - [`listen`]: listening sockets bound without a runtime (before dropping privileges);
//! - [`alloc`]: freed connection memory kept in the allocator (no madvise per shrink);
//! - [`counters`]: what happened, for the exit report;
//! - [`metrics`]: the counters as a `prometheus-client` collector (for `/metrics`);
//! - [`option_value`]: the one error of option values that do not parse, and the keyword
//!   table of the enum options (`--relay`, `--not-http`, `--proxy-protocol`).
//!
//! The command line, the loader and the publication of the counters for `redirector stats`
//! live in the `redirector` crate, which depends on this one (never the reverse). The two
//! detectors are pure functions: the property tests and the cargo-fuzz targets in `fuzz/`
//! check them.
#![warn(missing_docs)]

pub mod alloc;
pub mod counters;
pub mod detect;
pub mod fd_limit;
pub mod listen;
pub mod metrics;
pub mod option_value;
pub mod per_ip;
pub mod pipe;
pub mod pool;
pub mod prefixed;
#[cfg(test)]
mod properties;
pub mod proxy_protocol;
pub mod relay;
pub mod server;
pub mod sni;
pub mod splice;
