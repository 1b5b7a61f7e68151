//! spot-coordinator: holds the fleet's state, arbitrates PRIMARY per group,
//! serves the agent and operator APIs.
//!
//! `run` takes the configuration, an already bound listener and a
//! shutdown future, so tests bind `127.0.0.1:0` and own shutdown.

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod ctl;
pub mod export;
pub mod grants;
pub mod identity;
pub mod live;
pub mod metrics;
pub mod node;
pub mod state;
pub mod store;
pub mod tasks;
pub mod tls;

/// Serve with `config` until `shutdown` resolves (see [`node::run`]).
pub use node::run;
