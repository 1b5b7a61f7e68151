//! End-to-end home: helpers that start the real binaries on loopback ports
//! chosen by the OS, and the simulators they talk to.

pub mod agent_bench;
pub mod bench;
pub mod ec2_sim;
pub mod failover_bench;
pub mod fleet;
pub mod harness;
pub mod imds_sim;
