//! The integration tests, in one binary so that the crate is linked once.
//!
//! Every module talks to the real thing: a server on `127.0.0.1:0` in this
//! process with real tonic clients (`common`), or the real `longrun` binary
//! as a child process (`crash`, `restart`, `cli`, `serve_security`,
//! `bench_smoke`).

mod batches;
mod bench_smoke;
mod cli;
mod clients;
mod cluster;
mod common;
mod connections;
mod crash;
mod custom_kind;
mod dashboard;
mod flow;
mod full_disk;
mod hot_path;
mod http;
mod later;
mod lifecycle;
mod operations;
mod outage;
mod parsers;
mod pg;
mod pg_orders;
mod proxy;
mod queues;
mod recovery;
mod reflection;
mod reports;
mod restart;
mod schedules;
mod security;
mod serve_security;
mod spy;
mod store_conformance;
mod timing;
mod tls;
mod traces;
mod watch;
mod webhooks;
mod workers;
