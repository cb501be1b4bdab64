//! Library target so the loader can declare a build-dependency on this crate (the
//! programs themselves are in the `redirector` binary target, built for BPF only).
#![no_std]
