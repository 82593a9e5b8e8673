//! longrun: a gRPC server for long-running operations.
//!
//! Clients start work with a create RPC and get a `google.longrunning.Operation`
//! back at once; they follow it with GetOperation, WaitOperation or the
//! streaming WatchOperation, and can cancel it. The work runs on background
//! workers, and its state survives restarts: in an embedded sled store on
//! one machine, or in PostgreSQL shared by several nodes.
//!
//! The map, from the bottom up (each layer uses only those below it):
//! - [`model`]: the domain: ids, tenants, the operation record and its pure
//!   transitions, deliveries, the List filter, orders. Depends on nothing
//!   else here.
//! - [`store`]: the storage traits, the rulebook every write follows, and
//!   the two backends that carry out its plans: sled (only `store::sled`
//!   knows sled) and PostgreSQL (only `store::postgres` knows sqlx).
//! - [`engine`]: admission, dispatch, workers, recovery, retention and the
//!   watch hub, over the store traits; the [`Task`] API for kinds.
//! - [`pb`]: generated protobuf code, and `pb::convert` between the model
//!   and the messages.
//! - [`reports`], [`diagnostics`], [`backfill`]: kinds built on the Task
//!   API (orders and monthly reports; Sleep; a schedule's backfill).
//! - [`webhook`]: signed deliveries from the durable outbox;
//!   [`auth`]: principals, roles, the auth file and tokens.
//! - [`grpc`]: tonic services that translate between protobuf and the
//!   engine, behind the authentication door.
//! - [`http`]: the HTTP/JSON face: the protos' `google.api.http` routes,
//!   transcoded onto the gRPC services in-process.
//! - [`server`]: assembles store, engine, services, the HTTP face, health
//!   and reflection, and owns the listener, TLS and shutdown. With
//!   [`grpc`] and [`http`], the only code that knows tonic.
//!
//! The `longrun` binary adds the command line on top (`src/cli/`).

pub mod auth;
pub mod backfill;
pub mod bulk;
pub mod diagnostics;
pub mod engine;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod model;
pub mod pb;
pub mod reports;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod webhook;

pub use engine::{Engine, EngineConfig, Registry, Task, TaskContext, TaskError};
pub use server::{Server, ServerConfig};
