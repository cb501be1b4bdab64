//! What the fuzz targets of the sniffing proxy's two pure detectors
//! ([`redirector_sniff::detect`] and [`redirector_sniff::sni`]) share.
//!
//! The targets depend on `redirector-sniff` only, not on the `redirector` crate, whose build
//! script compiles the eBPF program (which cargo-fuzz would redo with sanitizer flags for
//! nothing).

/// Inputs longer than this are cut: the targets check every prefix, so the cost of one
/// input grows with the square of its length, and the interesting structure is near the
/// start anyway.
pub const MAX_INPUT: usize = 2048;
