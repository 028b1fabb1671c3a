//! `sse-loadgen`: the load generator of the SSE gateway (and of anything speaking SSE
//! over HTTP/1.1, Nchan included).
//!
//! It opens many streaming connections over a spread of loopback source addresses,
//! publishes `<seq>,<send-time-ns>` payloads at a steady rate through NATS or HTTP, and
//! reports what came back: per connection, expected vs delivered events, gaps,
//! duplicates, reordering and resets; delivery latency percentiles; the server's memory
//! per connection and CPU per event; and its own CPU per event. `--procs` spreads the
//! connections over child processes to go past the per-process open-file limit.
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | the validated run configuration |
//! | [`parse`] | response head, chunked de-framing, SSE scan (pure, tested) |
//! | [`connect`] | the streaming clients |
//! | [`pool`] | the reader threads |
//! | [`publish`] | the paced publisher (NATS, HTTP) |
//! | [`latency`] | per-thread latency histograms |
//! | [`proc_stats`] | `/proc` memory and CPU readings |
//! | [`report`] | partial results, merging, the final report |
//! | [`procs`] | child processes and their protocol |
//! | [`run`] | one run in each role |
//!
//! The binary's command line is in `main.rs`; `sse-loadgen run --help` lists it.

pub mod config;
pub mod connect;
pub mod latency;
pub mod parse;
pub mod pool;
pub mod proc_stats;
pub mod procs;
pub mod publish;
pub mod report;
pub mod run;
