//! Herald: a durable notification gateway.
//!
//! Requests are stored durably by the store ([`store`]: traits, and the
//! engines behind them) before the API ([`api`]) acknowledges them; the dispatcher ([`dispatch`]) delivers them to
//! the provider under a rate limit with retries; [`retention`] deletes what
//! was delivered long ago; [`server`] holds client connections to their
//! limits. [`app`] wires the pieces
//! together and owns the shutdown path; [`simulator`] is a local stand-in for
//! the provider.

pub mod allocator;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod instruments;
pub mod keys;
pub mod retention;
pub mod retry;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod simulator;
pub mod store;
pub mod telemetry;
