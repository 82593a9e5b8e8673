//! Printing operations: text for people, proto3 JSON for scripts.

use std::sync::LazyLock;
use std::time::SystemTime;

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::pb;
use crate::pb::google::longrunning::{Operation, operation};
use crate::pb::google::rpc::ErrorInfo;
use crate::pb::longrun::v1::{OperationMetadata, State};

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)
        .expect("the build embeds a valid descriptor set")
});

/// A message in the proto3 JSON mapping, with Any values expanded.
pub fn json<M: Message + Name>(message: &M) -> serde_json::Value {
    let Some(descriptor) = POOL.get_message_by_name(&M::full_name()) else {
        return serde_json::Value::Null;
    };
    match DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()) {
        Ok(dynamic) => serde_json::to_value(&dynamic).unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    }
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
    match ts {
        Some(ts) if ts.seconds >= 0 => {
            let t = SystemTime::UNIX_EPOCH
                + std::time::Duration::new(ts.seconds as u64, ts.nanos.max(0) as u32);
            humantime::format_rfc3339_millis(t).to_string()
        }
        _ => "-".to_owned(),
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
        out.push_str(&format!(
            "state:     {} (attempt {})\n",
            state_name(op),
            m.attempt
        ));
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
    let Some(descriptor) = POOL.get_message_by_name(name) else {
        return format!("({} bytes of {})", any.value.len(), any.type_url);
    };
    match DynamicMessage::decode(descriptor, any.value.as_slice()) {
        Ok(m) => format!("{name} {}", serde_json::to_string(&m).unwrap_or_default()),
        Err(_) => format!("(undecodable {})", any.type_url),
    }
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
