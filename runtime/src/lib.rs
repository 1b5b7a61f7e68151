//! The I/O pieces both binaries share: task supervision with one shutdown
//! token, logging set-up, TOML config files, the EC2 client and SQLite row
//! helpers. (`spot-common` stays
//! pure; this crate is where shared code that touches the world lives.)

pub mod config;
pub mod ec2;
pub mod fs;
#[cfg(feature = "test-util")]
pub mod pgtest;
pub mod retry;
pub mod sql;
pub mod supervise;
pub mod telemetry;
pub mod tls;
