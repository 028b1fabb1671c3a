//! Black-box tests: a real nats-server on free ports and the real `sse-gateway` binary,
//! spoken to over real sockets. Each test owns its processes; nothing is shared.
#![allow(clippy::unwrap_used)]

mod support;

mod admission;
mod auth;
mod browser;
mod budgets;
mod churn;
mod config;
mod delivery;
mod edge;
mod fanout;
mod faults;
mod hostile;
mod js_client;
mod lifecycle;
mod operator;
mod package;
mod publish;
mod reload;
mod resume;
mod routes;
mod slow;
mod stream_control;
mod subscribe;
mod tokens;
mod topics;
mod tracing;
mod upgrade;
