//! The interface between the snoop eBPF programs and the userspace controller,
//! defined once: map names, sizes, keys and values ([`maps`]), the data path
//! counters and their names ([`counters`]), the control-frame record
//! ([`capture`]), the programs' verdicts ([`verdict`]) and the wire constants
//! both sides parse ([`wire`]).
//!
//! Every type is `#[repr(C)]` plain data with explicit padding so the kernel
//! and userspace agree on its layout.
#![no_std]

pub mod capture;
pub mod counters;
pub mod maps;
pub mod verdict;
pub mod wire;

pub use capture::*;
pub use counters::*;
pub use maps::*;
pub use verdict::*;
