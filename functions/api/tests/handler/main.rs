//! The API handler, driven by the `events/*.json` fixtures against in-memory
//! ports, and openapi.json checked against the implementation.

mod api_events;
mod batches;
mod console;
mod contract;
mod lambda_events;
mod openapi;
mod quotas;
mod roles;
mod schedules;
mod schema;
mod support;
