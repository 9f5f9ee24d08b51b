//! The local stack: provisions every resource `template.yaml` declares on a local
//! emulator (moto) and hosts the project's functions in-process, wired the way
//! template.yaml wires them on AWS.

pub mod api_gateway;
pub mod emulator;
pub mod event_filter;
pub mod functions;
pub mod iam;
pub mod intrinsics;
pub mod jwt;
pub mod limits;
pub mod provision;
pub mod redrive;
pub mod runtime;
pub mod scheduler;
pub mod schedules;
pub mod sqs_poller;
pub mod stack;
pub mod stream_poller;
pub mod template;
pub mod upload;

/// The `HttpExecutorAllowedHosts` value that opens this machine's loopback addresses to the
/// http executor, which refuses them by default: `make dev` and the tests use it, so local
/// receivers work (the Lambda Runtime API stays refused).
pub const LOOPBACK_ALLOWED: &str = "127.0.0.0/8,::1";

pub use functions::FunctionHost;
pub use stack::{Backend, LocalStack, LocalStackSource, StackOptions};
