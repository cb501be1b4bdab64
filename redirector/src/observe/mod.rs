//! What a running instance reports: a counter snapshot ([`stats`]), its series
//! ([`prometheus`], and [`interfaces`]: whether each interface has the programs), their text in the negotiated format ([`exposition`]) and the
//! `--metrics` HTTP endpoint that serves it ([`http`]).

pub mod exposition;
pub mod flow_tables;
pub mod http;
pub mod interfaces;
pub mod kernel_log;
pub mod prometheus;
pub mod sniff_publish;
pub mod stats;
