//! Embedding longrun with an operation kind of your own.
//!
//! `WordCountTask` is a [`Task`]: the engine stores its request, runs it on
//! a worker, and stores its response. `WordCounter` is an ordinary tonic
//! service of your own whose create method submits the task and returns the
//! Operation. Clients then follow it through longrun's standard Operations
//! and OperationWatcher services, served beside it on the same port.
//!
//! ```text
//! cargo run --example custom_kind -- 127.0.0.1:50052
//! grpcurl -plaintext -d '{"text":"a b c\nd"}' 127.0.0.1:50052 \
//!     example.wordcount.v1.WordCounter/CountWords
//! ```

use std::time::Duration;

use longrun::engine::{Code, FieldViolation, SubmitOptions};
use longrun::pb::convert;
use longrun::pb::google::longrunning::Operation;
use longrun::{Engine, Registry, Server, ServerConfig, Task, TaskContext, TaskError};
use tonic::{Request, Response, Status};

/// The example's generated code.
pub mod pb {
    include!(concat!(
        env!("OUT_DIR"),
        "/examples/example.wordcount.v1.rs"
    ));

    /// Its descriptors, for reflection.
    pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(
        env!("OUT_DIR"),
        "/examples/wordcount_descriptor.bin"
    ));
}

use pb::word_counter_server::{WordCounter, WordCounterServer};
use pb::{CountWordsRequest, CountWordsResponse};

/// Counts words line by line, reporting progress and honouring cancellation.
struct WordCountTask;

impl Task for WordCountTask {
    type Request = CountWordsRequest;
    type Response = CountWordsResponse;
    const KIND: &'static str = "example.wordcount.v1.CountWords";

    fn validate(&self, request: &CountWordsRequest) -> Result<(), FieldViolation> {
        if request.text.len() > 1 << 20 {
            return Err(FieldViolation::new("text", "text may be at most 1 MiB"));
        }
        Ok(())
    }

    async fn run(
        &self,
        ctx: TaskContext,
        request: CountWordsRequest,
    ) -> Result<CountWordsResponse, TaskError> {
        let lines: Vec<&str> = request.text.lines().collect();
        let mut words = 0i64;
        for (i, line) in lines.iter().enumerate() {
            if ctx.is_cancelled() {
                return Err(TaskError::cancelled());
            }
            words += line.split_whitespace().count() as i64;
            ctx.set_progress(
                ((i + 1) * 100 / lines.len()) as u32,
                format!("line {} of {}", i + 1, lines.len()),
            );
            // Pretend each line is expensive, so progress is visible.
            if !ctx.sleep(Duration::from_millis(50)).await {
                return Err(TaskError::cancelled());
            }
        }
        if words == 0 && !request.text.is_empty() {
            return Err(TaskError::new(
                Code::InvalidArgument,
                "NO_WORDS",
                "the text has only white space",
            ));
        }
        Ok(CountWordsResponse {
            words,
            lines: lines.len() as i64,
        })
    }
}

/// The user's own gRPC service: it only submits work to the engine.
struct WordCounterService {
    engine: Engine,
}

#[tonic::async_trait]
impl WordCounter for WordCounterService {
    async fn count_words(
        &self,
        request: Request<CountWordsRequest>,
    ) -> Result<Response<Operation>, Status> {
        // The server's door has authenticated the caller; the operation
        // belongs to its tenant.
        let caller = longrun::grpc::auth::caller(&request)?;
        let request = request.into_inner();
        let options = SubmitOptions {
            tenant: caller.tenant.clone(),
            request_id: convert::request_id(&request.request_id)?,
            ..SubmitOptions::default()
        };
        let op = self
            .engine
            .submit::<WordCountTask>(&request, options)
            .await?;
        Ok(Response::new(convert::operation(&op)))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50052".to_owned());
    let data_dir = std::env::temp_dir().join("longrun-custom-kind-example");

    let mut registry = Registry::new();
    registry.register(WordCountTask);
    let config = ServerConfig {
        data_dir,
        ..ServerConfig::default()
    };
    let mut server = Server::open(config, registry).await?;
    let service = WordCounterService {
        engine: server.engine().clone(),
    };
    server.routes().add_service(WordCounterServer::new(service));
    server.reflect(pb::DESCRIPTORS);

    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("serving WordCounter and longrun's services on {address}");
    server
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
