//! `longrun schedule create|get|list|update|delete|pause|resume|run|runs|
//! backfill`: schedules of the caller's tenant.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use super::client::{connect, describe};
use super::ops::wait;
use super::output::{self, json};
use super::{ClientArgs, Output};
use longrun::pb::longrun::v1::schedule::OverlapPolicy;
use longrun::pb::longrun::v1::{
    BackfillRequest, CreateScheduleRequest, DeleteScheduleRequest, GetScheduleRequest,
    ListRunsRequest, ListSchedulesRequest, PauseScheduleRequest, ResumeScheduleRequest,
    RunNowRequest, RunOptions, Schedule, SleepRequest, UpdateScheduleRequest,
};

/// Schedule commands.
#[derive(Debug, clap::Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: a kind, its request, and a cron expression or an
    /// interval.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// Its id: lower-case letters, digits and '-'.
        id: String,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Change a schedule: only the settings given change.
    Update {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// One schedule: its clock in words, next times and last runs.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Every schedule of the tenant.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a schedule (its runs stay).
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Stop a schedule's ticks until it is resumed.
    Pause {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Resume a paused schedule from its next tick.
    Resume {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Run a schedule once, now.
    Run {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// A schedule's runs, newest first.
    Runs {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// Run the ticks of a past range once each (RFC 3339 times).
    Backfill {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        from: SystemTime,
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        to: SystemTime,
        /// Block until the backfill is done.
        #[arg(long)]
        wait: bool,
    },
}

/// What a schedule runs and when.
#[derive(Debug, clap::Args)]
pub struct SpecArgs {
    /// The kind, e.g. `sleep` or an outside kind.
    #[arg(long)]
    kind: Option<String>,
    /// A cron expression: 5 fields, or 6 with seconds first.
    #[arg(long, conflicts_with = "every")]
    cron: Option<String>,
    /// The IANA time zone of --cron, e.g. Europe/Berlin (UTC by default).
    #[arg(long)]
    tz: Option<String>,
    /// Or an interval, e.g. 15m.
    #[arg(long, value_parser = humantime::parse_duration)]
    every: Option<Duration>,
    /// The request of every run, as proto3 JSON with its "@type".
    #[arg(long, conflicts_with_all = ["sleep", "text"])]
    payload: Option<String>,
    /// For the sleep kind: how long each run sleeps.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "text")]
    sleep: Option<Duration>,
    /// For an outside kind: the payload, as a google.protobuf.StringValue.
    #[arg(long)]
    text: Option<String>,
    /// Each run starts up to this long after its tick.
    #[arg(long, value_parser = humantime::parse_duration)]
    jitter: Option<Duration>,
    /// While the last run still goes: skip, buffer-one, allow-all or
    /// cancel-previous.
    #[arg(long)]
    overlap: Option<String>,
    /// After downtime, ticks missed this far back run (default 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    catch_up_window: Option<Duration>,
    /// After downtime, only the latest missed tick runs.
    #[arg(long)]
    latest_only: bool,
    /// Higher starts first.
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i32>,
    /// The concurrency key of every run.
    #[arg(long)]
    concurrency_key: Option<String>,
    /// Each run is dropped if not started this long after its tick.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
}

impl SpecArgs {
    /// The schedule the flags describe, and the fields they name.
    fn schedule(&self) -> anyhow::Result<(Schedule, Vec<String>)> {
        let mut fields = Vec::new();
        let mut named = |field: &str, given: bool| {
            if given {
                fields.push(field.to_owned());
            }
        };
        named("kind", self.kind.is_some());
        named("cron", self.cron.is_some());
        named("time_zone", self.tz.is_some());
        named("interval", self.every.is_some());
        named(
            "payload",
            self.payload.is_some() || self.sleep.is_some() || self.text.is_some(),
        );
        named("jitter", self.jitter.is_some());
        named("overlap_policy", self.overlap.is_some());
        named("catch_up_window", self.catch_up_window.is_some());
        named("catch_up_latest_only", self.latest_only);
        named(
            "run",
            self.priority.is_some() || self.concurrency_key.is_some() || self.ttl.is_some(),
        );
        let payload = match (&self.payload, self.sleep, &self.text) {
            (Some(json), ..) => Some(
                longrun::pb::from_json::<prost_types::Any>(json.as_bytes())
                    .map_err(|e| anyhow::anyhow!("--payload: {e}"))?,
            ),
            (None, Some(d), _) => Some(prost_types::Any::from_msg(&SleepRequest {
                duration: Some(longrun::pb::duration(d)),
                ..SleepRequest::default()
            })?),
            (None, None, Some(text)) => Some(prost_types::Any::from_msg(&text.clone())?),
            (None, None, None) => None,
        };
        let overlap = match self.overlap.as_deref() {
            None | Some("skip") => OverlapPolicy::Skip,
            Some("buffer-one") => OverlapPolicy::BufferOne,
            Some("allow-all") => OverlapPolicy::AllowAll,
            Some("cancel-previous") => OverlapPolicy::CancelPrevious,
            Some(other) => anyhow::bail!(
                "--overlap {other:?}: expected skip, buffer-one, allow-all or cancel-previous"
            ),
        };
        let schedule = Schedule {
            kind: self.kind.clone().unwrap_or_default(),
            payload,
            cron: self.cron.clone().unwrap_or_default(),
            time_zone: self.tz.clone().unwrap_or_default(),
            interval: self.every.map(longrun::pb::duration),
            jitter: self.jitter.map(longrun::pb::duration),
            overlap_policy: overlap as i32,
            catch_up_window: self.catch_up_window.map(longrun::pb::duration),
            catch_up_latest_only: self.latest_only,
            run: Some(RunOptions {
                priority: self.priority.unwrap_or(0),
                concurrency_key: self.concurrency_key.clone().unwrap_or_default(),
                ttl: self.ttl.map(longrun::pb::duration),
                ..RunOptions::default()
            }),
            ..Schedule::default()
        };
        Ok((schedule, fields))
    }
}

fn time(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(longrun::pb::system_time)
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "-".into())
}

/// A schedule for people.
fn show(s: &Schedule) {
    let id = s.name.trim_start_matches("schedules/");
    let state = if s.paused { "paused" } else { "active" };
    println!("{id}: {} ({state})", s.description);
    println!("  kind      {}", s.kind);
    let overlap = OverlapPolicy::try_from(s.overlap_policy)
        .map(|p| p.as_str_name())
        .unwrap_or("SKIP");
    println!("  overlap   {overlap}");
    let next: Vec<String> = s.next_run_times.iter().map(|t| time(Some(t))).collect();
    println!(
        "  next      {}",
        if next.is_empty() {
            "-".into()
        } else {
            next.join(", ")
        }
    );
    if let Some(e) = &s.last_error {
        println!("  error     {}", e.message);
    }
    if s.skipped_ticks > 0 {
        println!("  skipped   {} ticks", s.skipped_ticks);
    }
    for run in &s.recent_runs {
        println!(
            "  run       {}  {}  {}",
            time(run.scheduled_time.as_ref()),
            run.operation,
            if run.state.is_empty() {
                "-"
            } else {
                &run.state
            }
        );
    }
}

fn name(id: &str) -> String {
    format!("schedules/{}", id.trim_start_matches("schedules/"))
}

pub async fn run(command: ScheduleCommand) -> anyhow::Result<ExitCode> {
    use ScheduleCommand as C;
    let client = match &command {
        C::Create { client, .. }
        | C::Update { client, .. }
        | C::Get { client, .. }
        | C::List { client }
        | C::Delete { client, .. }
        | C::Pause { client, .. }
        | C::Resume { client, .. }
        | C::Run { client, .. }
        | C::Runs { client, .. }
        | C::Backfill { client, .. } => client.clone(),
    };
    let mut clients = connect(&client).await?;
    let schedules = &mut clients.schedules;
    let one = match command {
        C::Create { id, spec, .. } => {
            let (schedule, _) = spec.schedule()?;
            schedules
                .create_schedule(CreateScheduleRequest {
                    schedule: Some(schedule),
                    schedule_id: id,
                })
                .await
        }
        C::Update { id, spec, .. } => {
            let (mut schedule, paths) = spec.schedule()?;
            schedule.name = name(&id);
            schedules
                .update_schedule(UpdateScheduleRequest {
                    schedule: Some(schedule),
                    update_mask: Some(prost_types::FieldMask { paths }),
                })
                .await
        }
        C::Get { id, .. } => {
            schedules
                .get_schedule(GetScheduleRequest { name: name(&id) })
                .await
        }
        C::Pause { id, .. } => {
            schedules
                .pause_schedule(PauseScheduleRequest { name: name(&id) })
                .await
        }
        C::Resume { id, .. } => {
            schedules
                .resume_schedule(ResumeScheduleRequest { name: name(&id) })
                .await
        }
        C::Delete { id, .. } => {
            schedules
                .delete_schedule(DeleteScheduleRequest { name: name(&id) })
                .await
                .map_err(|s| describe(&s))?;
            if client.output == Output::Text {
                println!("{} deleted", name(&id));
            }
            return Ok(ExitCode::SUCCESS);
        }
        C::List { .. } => {
            let mut token = String::new();
            loop {
                let page = schedules
                    .list_schedules(ListSchedulesRequest {
                        page_size: 500,
                        page_token: token,
                    })
                    .await
                    .map_err(|s| describe(&s))?
                    .into_inner();
                for s in &page.schedules {
                    match client.output {
                        Output::Json => println!("{}", json(s)),
                        Output::Text => show(s),
                    }
                }
                if page.next_page_token.is_empty() {
                    return Ok(ExitCode::SUCCESS);
                }
                token = page.next_page_token;
            }
        }
        C::Runs { id, limit, .. } => {
            let page = schedules
                .list_runs(ListRunsRequest {
                    parent: name(&id),
                    page_size: limit,
                    page_token: String::new(),
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            for op in &page.operations {
                match client.output {
                    Output::Json => println!("{}", json(op)),
                    Output::Text => println!("{}", output::row(op)),
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        C::Run { id, .. } => {
            let op = schedules
                .run_now(RunNowRequest {
                    name: name(&id),
                    request_id: String::new(),
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            super::ops::print(&op, client.output);
            return Ok(ExitCode::SUCCESS);
        }
        C::Backfill {
            id,
            from,
            to,
            wait: block,
            ..
        } => {
            let op = schedules
                .backfill(BackfillRequest {
                    name: name(&id),
                    start_time: Some(longrun::pb::timestamp(from)),
                    end_time: Some(longrun::pb::timestamp(to)),
                    request_id: String::new(),
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            if block {
                return wait(&mut clients, op.name, None, client.output).await;
            }
            super::ops::print(&op, client.output);
            return Ok(ExitCode::SUCCESS);
        }
    };
    let schedule = one.map_err(|s| describe(&s))?.into_inner();
    match client.output {
        Output::Json => println!("{}", json(&schedule)),
        Output::Text => show(&schedule),
    }
    Ok(ExitCode::SUCCESS)
}
