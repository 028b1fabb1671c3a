//! Black-box tests: a real nats-server on free ports and the real `sse-gateway` binary,
//! spoken to over real sockets. Each test owns its processes; nothing is shared.
#![allow(clippy::unwrap_used)]

mod support;

mod admission;
mod churn;
mod config;
mod delivery;
mod fanout;
mod faults;
mod lifecycle;
mod resume;
mod slow;
mod subscribe;
