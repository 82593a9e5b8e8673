//! Printing operations: text for people, proto3 JSON for scripts.

use std::time::SystemTime;

use prost::{Message, Name};

use longrun::pb;
use longrun::pb::google::longrunning::{Operation, operation};
use longrun::pb::google::rpc::ErrorInfo;
use longrun::pb::longrun::v1::{OperationMetadata, State};

/// A message in the proto3 JSON mapping, with Any values expanded.
pub fn json<M: Message + Name>(message: &M) -> serde_json::Value {
    pb::to_json(message)
}

/// The metadata of an operation, when it is longrun's.
pub fn metadata(op: &Operation) -> Option<OperationMetadata> {
    let any = op.metadata.as_ref()?;
    if any.type_url != OperationMetadata::type_url() {
        return None;
    }
    OperationMetadata::decode(any.value.as_slice()).ok()
}

fn time(ts: &Option<prost_types::Timestamp>) -> String {
    match ts.as_ref().and_then(pb::system_time) {
        Some(t) => humantime::format_rfc3339_millis(t).to_string(),
        None => "-".to_owned(),
    }
}

/// How long until the operation's estimated end, as "ETA 12s", when it
/// has one in the future.
pub fn eta(m: &OperationMetadata) -> Option<String> {
    let end = pb::system_time(m.estimated_end_time.as_ref()?)?;
    let left = end.duration_since(SystemTime::now()).ok()?;
    let left = std::time::Duration::from_secs(left.as_secs() + u64::from(left.subsec_nanos() > 0));
    Some(format!("ETA {}", humantime::format_duration(left)))
}

/// How far along (0 to 100) a running operation should be by now, going
/// by its start and its estimated end.
pub fn expected_percent(m: &OperationMetadata) -> Option<u64> {
    if State::try_from(m.state).ok()? != State::Running {
        return None;
    }
    let start = pb::system_time(m.start_time.as_ref()?)?;
    let end = pb::system_time(m.estimated_end_time.as_ref()?)?;
    let whole = end.duration_since(start).ok()?.as_secs_f64();
    let gone = SystemTime::now().duration_since(start).ok()?.as_secs_f64();
    (whole > 0.0).then(|| ((gone / whole) * 100.0).clamp(0.0, 100.0) as u64)
}

/// A duration for people: to the millisecond under ten seconds, to the
/// second above ("2.003s", "1m 12s"), never in nanoseconds.
pub fn short_duration(d: std::time::Duration) -> String {
    if d < std::time::Duration::from_secs(10) {
        format!("{:.3}s", d.as_secs_f64())
    } else {
        humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
    }
}

/// The state name of an operation.
pub fn state_name(op: &Operation) -> String {
    metadata(op)
        .and_then(|m| State::try_from(m.state).ok())
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|| if op.done { "DONE" } else { "PENDING" }.to_owned())
}

/// A multi-line description of one operation.
pub fn text(op: &Operation) -> String {
    let mut out = format!("name:      {}\n", op.name);
    if let Some(m) = metadata(op) {
        out.push_str(&format!("kind:      {}\n", m.kind));
        out.push_str(&format!("state:     {}\n", state_name(op)));
        let counted = m.attempt - m.stopped_attempts;
        out.push_str(&format!(
            "attempt:   {} ({counted} of {} allowed",
            m.attempt, m.max_attempts
        ));
        if m.stopped_attempts > 0 {
            out.push_str(&format!(
                "; {} stopped by a shutdown, which do not count",
                m.stopped_attempts
            ));
        }
        out.push_str(")\n");
        match &m.request {
            Some(any) => out.push_str(&format!("request:   {}\n", any_json(any))),
            None if m.request_size_bytes > 0 => out.push_str(&format!(
                "request:   ({} bytes, too large to show)\n",
                m.request_size_bytes
            )),
            None => {}
        }
        if let Some(run) = m.run.as_ref() {
            if run.priority != 0 {
                out.push_str(&format!("priority:  {}\n", run.priority));
            }
            if !run.concurrency_key.is_empty() {
                out.push_str(&format!("key:       {}\n", run.concurrency_key));
            }
        }
        if let Some(w) = &m.waiting_reason {
            out.push_str(&format!("waiting:   {}", w.reason));
            if !w.concurrency_key.is_empty() {
                out.push_str(&format!(" (key {})", w.concurrency_key));
            }
            if w.until.is_some() {
                out.push_str(&format!(" until {}", time(&w.until)));
            }
            out.push('\n');
        }
        if !m.holder.is_empty() {
            out.push_str(&format!("runs on:   {}\n", m.holder));
        }
        out.push_str(&format!("progress:  {}%", m.progress_percent));
        if !m.status_message.is_empty() {
            out.push_str(&format!("  {}", m.status_message));
        }
        out.push('\n');
        if m.requested_cancellation {
            out.push_str("cancel:    requested\n");
        }
        out.push_str(&format!("created:   {}\n", time(&m.create_time)));
        out.push_str(&format!("started:   {}\n", time(&m.start_time)));
        out.push_str(&format!("updated:   {}\n", time(&m.update_time)));
        out.push_str(&format!("ended:     {}\n", time(&m.end_time)));
        let at = |ts: &Option<prost_types::Timestamp>| ts.as_ref().and_then(pb::system_time);
        let (created, started, ended) = (at(&m.create_time), at(&m.start_time), at(&m.end_time));
        let span = |from: Option<SystemTime>, to: Option<SystemTime>| {
            let to = to.unwrap_or_else(SystemTime::now);
            from.and_then(|from| to.duration_since(from).ok())
                .map(short_duration)
        };
        if let Some(queued) = span(created, started.or(ended)) {
            out.push_str(&format!("queued:    {queued}\n"));
        }
        if let Some(ran) = span(started, ended) {
            out.push_str(&format!("ran:       {ran}\n"));
        }
        if m.end_time.is_none() {
            let estimate = match (&m.estimated_end_time, eta(&m)) {
                (Some(_), Some(eta)) => format!("{} ({eta})", time(&m.estimated_end_time)),
                (Some(_), None) => format!("{} (overdue)", time(&m.estimated_end_time)),
                (None, _) => "- (nothing known yet)".to_owned(),
            };
            out.push_str(&format!("estimate:  {estimate}\n"));
        }
    }
    out.push_str(&format!("done:      {}\n", op.done));
    match &op.result {
        None => {}
        Some(operation::Result::Response(any)) => {
            out.push_str(&format!("response:  {}\n", any_json(any)));
        }
        Some(operation::Result::Error(status)) => {
            let reason = status
                .details
                .iter()
                .find(|d| d.type_url == ErrorInfo::type_url())
                .and_then(|d| ErrorInfo::decode(d.value.as_slice()).ok())
                .map(|i| format!(" [{}]", i.reason))
                .unwrap_or_default();
            let code = tonic::Code::from_i32(status.code);
            out.push_str(&format!(
                "error:     {code:?}: {}{reason}\n",
                status.message
            ));
        }
    }
    out
}

fn any_json(any: &prost_types::Any) -> String {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let Some(descriptor) = pb::descriptor_pool().get_message_by_name(name) else {
        return format!("({} bytes of {})", any.value.len(), any.type_url);
    };
    match pb::json::value(&descriptor, &any.value) {
        Some(json) => format!("{name} {json}"),
        None => format!("(undecodable {})", any.type_url),
    }
}

/// One line about a webhook delivery.
pub fn delivery(d: &longrun::pb::longrun::v1::Delivery) -> String {
    let state = longrun::pb::longrun::v1::delivery::DeliveryState::try_from(d.state)
        .map(|s| s.as_str_name())
        .unwrap_or("?");
    let mut line = format!(
        "webhook:   {} {} {state} after {} attempt(s)",
        d.r#type, d.callback_url, d.attempts
    );
    if d.last_status_code != 0 {
        line.push_str(&format!(", last status {}", d.last_status_code));
    }
    if !d.last_error.is_empty() {
        line.push_str(&format!(", last error: {}", d.last_error));
    }
    if d.next_attempt_time.is_some() {
        line.push_str(&format!(", next attempt {}", time(&d.next_attempt_time)));
    }
    line
}

/// One line of the List table.
pub fn row(op: &Operation) -> String {
    let m = metadata(op).unwrap_or_default();
    format!(
        "{:<48} {:<11} {:>4}%  {:<30} {}",
        op.name,
        state_name(op),
        m.progress_percent,
        m.kind,
        time(&m.create_time)
    )
}
