//! What a running instance reports: a counter snapshot ([`stats`]), its series
//! ([`prometheus`]), their text in the negotiated format ([`exposition`]) and the
//! `--metrics` HTTP endpoint that serves it ([`http`]).

pub mod exposition;
pub mod flow_tables;
pub mod http;
pub mod kernel_log;
pub mod prometheus;
pub mod sniff_publish;
pub mod stats;
