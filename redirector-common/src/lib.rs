//! Types and pure logic shared by the redirector eBPF programs and the user-space loader.
//!
//! Everything here is `#![no_std]`, `#[repr(C)]` with fixed-width fields and explicit
//! padding, so the kernel and user space agree on every byte of every map key and value.
#![no_std]
#![deny(missing_docs)]

pub mod addr;
pub mod conntrack;
pub mod csum;
pub mod maps;
pub mod reap;
pub mod stats;
