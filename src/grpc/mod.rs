//! The gRPC layer: the only module that knows tonic. Each service is a thin
//! struct over an [`Engine`](crate::engine::Engine) handle that converts
//! requests, calls the engine, and converts the answer back.

pub mod auth;
pub mod convert;
pub mod diagnostics;
pub mod limits;
pub mod notifications;
pub mod operations;
pub mod reports;
pub mod status;
pub mod watcher;

pub use self::diagnostics::DiagnosticsService;
pub use self::notifications::NotificationsService;
pub use self::operations::OperationsService;
pub use self::reports::ReportsService;
pub use self::watcher::WatcherService;
