//! The gRPC layer: with `server/`, the only code that names tonic. Each
//! service is a thin struct over an [`Engine`](crate::engine::Engine)
//! handle that converts requests (with `pb::convert`), calls the engine or
//! the report domain, and converts the answer back. `status` builds every
//! status (and the HTTP status and JSON body a status becomes); `auth` is
//! the door every call passes; `metered` counts calls. The HTTP/JSON face
//! above this layer (`src/http/`) calls these services; nothing here
//! calls it.

pub mod auth;
pub mod batches;
pub mod console;
pub mod diagnostics;
pub mod direct;
pub mod limits;
pub mod metered;
pub mod notifications;
pub mod operations;
pub mod reports;
pub mod schedules;
pub mod status;
pub mod watcher;
pub mod workers;

pub use self::batches::BatchesService;
pub use self::console::{ConsoleService, QueuesService};
pub use self::diagnostics::DiagnosticsService;
pub use self::notifications::NotificationsService;
pub use self::operations::OperationsService;
pub use self::reports::ReportsService;
pub use self::schedules::SchedulesService;
pub use self::watcher::WatcherService;
pub use self::workers::WorkersService;
