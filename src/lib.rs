//! longrun: a gRPC server for long-running operations.
//!
//! Clients start work with a create RPC and get a `google.longrunning.Operation`
//! back at once; they follow it with GetOperation, WaitOperation or the
//! streaming WatchOperation, and can cancel it. The work runs on background
//! workers, and its state survives restarts in an embedded sled store.
//!
//! The map:
//! - [`engine`]: operations, the task API for operation kinds, the queue,
//!   workers and the watch hub. Knows neither tonic nor sled.
//! - [`store`]: the storage trait and its sled backend. Only `store::sled`
//!   knows sled.
//! - [`grpc`]: tonic services that translate between protobuf and the
//!   engine. Only this module (and [`server`], which wires it) knows tonic.
//! - [`server`]: assembles store, engine, services, health and reflection.
//! - [`auth`]: principals, roles and tenants; the auth file and tokens.
//! - [`tls`]: rustls configuration for the gRPC port, reloadable;
//!   [`listen`]: accepting connections, each with a deadline to start.
//! - [`diagnostics`]: the Sleep kind.
//! - [`reports`]: the report service's domain: order imports and monthly
//!   reports, as two kinds.
//! - [`webhook`]: signed webhook deliveries from the durable outbox.
//! - [`cli`]: the `longrun` command line.
//! - [`pb`]: generated protobuf code.

pub mod auth;
pub mod cli;
pub mod diagnostics;
pub mod engine;
pub mod grpc;
pub mod listen;
pub mod pb;
pub mod reports;
pub mod server;
pub mod store;
pub mod tls;
pub mod webhook;

pub use engine::{Engine, EngineConfig, Registry, Task, TaskContext, TaskError};
pub use server::{Server, ServerConfig};
