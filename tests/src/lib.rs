//! End-to-end home: helpers that start the real binaries on loopback ports
//! chosen by the OS, and the simulators they talk to.

pub mod agent_bench;
pub mod bench;
pub mod ec2_sim;
pub mod failover_bench;
pub mod fleet;
pub mod harness;
pub mod imds_sim;
pub mod ledger;
pub mod pricing_bench;
pub mod proxy;
pub mod scenarios;

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
