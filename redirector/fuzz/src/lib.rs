//! The two pure detectors of `redirector sniff`, compiled from their own source files.
//!
//! The fuzz targets do not depend on the `redirector` crate: its build script compiles the
//! eBPF program, which cargo-fuzz would redo with sanitizer flags for nothing. Both files
//! need only `httparse` and `thiserror`.

#[path = "../../src/sniff/detect.rs"]
pub mod detect;
#[path = "../../src/sniff/sni.rs"]
pub mod sni;

/// Inputs longer than this are cut: the targets check every prefix, so the cost of one
/// input grows with the square of its length, and the interesting structure is near the
/// start anyway.
pub const MAX_INPUT: usize = 2048;
