//! A load generator for flow control: creates N Diagnostics.Sleep
//! operations (no duration) spread round-robin over K concurrency keys,
//! from C concurrent callers, and waits until every one is done. Prints
//! one JSON object: creates per second, and end to end (first create to
//! all done) per second. h2load sends one fixed body, so it cannot vary
//! the key; this can.
//!
//! ```sh
//! cargo run --release --example keyed_load -- http://127.0.0.1:50051 20000 1000 64
//! ```

use std::time::Instant;

use longrun::pb::google::longrunning::WaitOperationRequest;
use longrun::pb::google::longrunning::operations_client::OperationsClient;
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;
use longrun::pb::longrun::v1::{RunOptions, SleepRequest};
use tonic::transport::Channel;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: keyed_load SERVER N KEYS CALLERS";
    let server = args.get(1).ok_or(usage)?.clone();
    let n: usize = args.get(2).ok_or(usage)?.parse()?;
    let keys: usize = args.get(3).ok_or(usage)?.parse::<usize>()?.max(1);
    let callers: usize = args.get(4).ok_or(usage)?.parse::<usize>()?.max(1);
    let channel = Channel::from_shared(server)?.connect().await?;

    let began = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for caller in 0..callers {
        let mut client = DiagnosticsClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut names = Vec::new();
            for i in (caller..n).step_by(callers) {
                let request = SleepRequest {
                    run: Some(RunOptions {
                        concurrency_key: format!("customer-{}", i % keys),
                        ..RunOptions::default()
                    }),
                    ..SleepRequest::default()
                };
                names.push(client.sleep(request).await?.into_inner().name);
            }
            Ok::<_, tonic::Status>(names)
        }));
    }
    let mut names = Vec::with_capacity(n);
    for task in tasks {
        names.extend(task.await??);
    }
    let created = began.elapsed();

    // Each caller waits for its share, long-polling.
    let mut waits = Vec::with_capacity(callers);
    for share in names.chunks(n.div_ceil(callers).max(1)) {
        let mut ops = OperationsClient::new(channel.clone());
        let share = share.to_vec();
        waits.push(tokio::spawn(async move {
            for name in share {
                loop {
                    let op = ops
                        .wait_operation(WaitOperationRequest {
                            name: name.clone(),
                            timeout: Some(prost_types::Duration {
                                seconds: 30,
                                nanos: 0,
                            }),
                        })
                        .await?
                        .into_inner();
                    if op.done {
                        break;
                    }
                }
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for wait in waits {
        wait.await??;
    }
    let done = began.elapsed();
    println!(
        "{{\"create\": {:.0}, \"e2e\": {:.0}, \"n\": {n}, \"keys\": {keys}}}",
        n as f64 / created.as_secs_f64(),
        n as f64 / done.as_secs_f64()
    );
    Ok(())
}
