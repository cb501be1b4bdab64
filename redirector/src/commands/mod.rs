//! The control commands, one module per verb: each finds the instance of this network
//! namespace, does one thing through `redirector::control`, and prints the result.

pub mod add;
pub mod allow;
pub mod detach;
pub mod disable;
pub mod disallow;
pub mod enable;
pub mod flows;
pub mod flush;
pub mod remove;
pub mod stats;
pub mod status;
