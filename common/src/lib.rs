//! Pure core of the spot optimizer: domain types, the instance role state
//! machine, the failover planner, the wire format of API v1, pricing math
//! and the one retry policy.
//!
//! Nothing in this crate does I/O or reads a clock: callers pass `now` in,
//! so every rule here is a plain unit test.

#[macro_use]
mod macros;

pub mod command;
pub mod decision;
pub mod identity;
pub mod ids;
pub mod notice;
pub mod planner;
pub mod pricing;
pub mod retry;
pub mod state;
pub mod types;
pub mod vocab;
pub mod wire;

pub use command::*;
pub use macros::UnknownVariant;
pub use state::{GroupModel, RoleError, RoleEvent};
pub use types::*;

/// `error: cause: cause` on one line, for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}
