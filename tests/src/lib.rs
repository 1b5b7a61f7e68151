//! End-to-end home: helpers that start the real binaries on loopback ports
//! chosen by the OS, and the simulators they talk to.

pub mod bench;
pub mod harness;
