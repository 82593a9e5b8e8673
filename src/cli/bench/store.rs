//! `longrun bench store`: batches of creates committed straight to a sled
//! store, with no server in between. Each batch's creates carry the batch
//! number in their request, and `committed N` is printed (and flushed) only
//! once batch N is durable, so that a crash test can kill the process at
//! any moment and then check that every batch is whole or absent, and that
//! every batch reported is there.

use std::io::Write as _;
use std::path::Path;
use std::time::{Instant, SystemTime};

use anyhow::{Context, bail};
use longrun::model::{Limits, Operation, Payload, Tenant};
use longrun::store::{OperationStore, SledStore, SyncMode, Write};

/// The kind every create of this benchmark has.
pub const KIND: &str = "longrun.bench.Store";

pub(super) async fn run(
    dir: &Path,
    batch: usize,
    batches: u64,
    sync: SyncMode,
) -> anyhow::Result<()> {
    let store = SledStore::open(dir, sync).context("open the store")?;
    let started = Instant::now();
    let mut stdout = std::io::stdout().lock();
    for number in 0..batches {
        let writes = (0..batch)
            .map(|_| {
                Write::Create(Operation::new(
                    KIND,
                    Payload {
                        type_url: "type.googleapis.com/google.protobuf.UInt64Value".into(),
                        value: number.to_be_bytes().to_vec().into(),
                    },
                    None,
                    [0; 32],
                    Limits::default(),
                    Tenant::default_tenant(),
                    SystemTime::now(),
                ))
            })
            .collect();
        for result in store.commit(writes, SystemTime::now()).await {
            if let Err(e) = result {
                bail!("batch {number} failed: {e}");
            }
        }
        writeln!(stdout, "committed {number}")?;
        stdout.flush()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let creates = batches * batch as u64;
    eprintln!(
        "{creates} creates in {batches} batches of {batch}: {:.0} creates/s, {:.0} batches/s, {} flushes",
        creates as f64 / seconds,
        batches as f64 / seconds,
        store.flushes()
    );
    Ok(())
}
