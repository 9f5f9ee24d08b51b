//! Taskflow's shared library: the task domain, the ports it needs (small traits)
//! and the AWS adapters behind them. Functions stay thin and call into here.

pub mod aws;
pub mod config;
pub mod domain;
pub mod error;
pub mod executors;
pub mod ports;
pub mod service;
pub mod services;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;

pub use error::{AppError, FieldErrors};
