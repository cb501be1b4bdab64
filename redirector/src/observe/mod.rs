//! What a running instance reports: a counter snapshot ([`stats`]), its Prometheus text
//! ([`prometheus`]) and the `--metrics` HTTP endpoint that serves it ([`http`]).

pub mod flow_tables;
pub mod http;
pub mod kernel_log;
pub mod prometheus;
pub mod sniff_publish;
pub mod stats;
