//! The local stack: provisions every resource `template.yaml` declares on a local
//! emulator (moto) and hosts the project's functions in-process, wired the way
//! template.yaml wires them on AWS.

pub mod emulator;
pub mod provision;
pub mod template;
