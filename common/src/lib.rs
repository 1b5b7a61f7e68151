//! Pure core of the spot optimizer: domain types, the instance role state
//! machine, the wire format of API v1 and the one retry policy.
//!
//! Nothing in this crate does I/O or reads a clock: callers pass `now` in,
//! so every rule here is a plain unit test.

pub mod failover;
pub mod notice;
pub mod pricing;
pub mod retry;
pub mod state;
pub mod types;
pub mod wire;

pub use state::{GroupModel, Transition, TransitionError};
pub use types::*;
