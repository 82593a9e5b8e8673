//! Traces: where an operation's spans come from and go.
//!
//! The engine's spans are ordinary `tracing` spans; when the server
//! exports traces, `tracing-opentelemetry` makes them OpenTelemetry spans,
//! and this module gives them their place: the create's span continues the
//! caller's W3C `traceparent`, and every later span of the operation (each
//! attempt, each webhook delivery) continues the create's, whose context
//! is stored with the operation ([`TraceContext`]). The context leaves as
//! a `traceparent` again: to outside workers, to `longrun worker`'s
//! command and on webhook POSTs. `export.rs` sends spans out over OTLP,
//! bounded and off the request path.
//!
//! Only this module names the opentelemetry crates.

mod export;

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use self::export::{Exporting, OtlpProtocol, TraceConfig, TraceError};
use crate::model::{MAX_TRACE_STATE, TraceContext};

/// The W3C header that names the caller's span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header of vendors' trace state.
pub const TRACESTATE: &str = "tracestate";

/// The context a `traceparent` (and `tracestate`) header names; None when
/// there is none or it is malformed (W3C: a bad one is ignored, and the
/// operation starts a trace of its own).
pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<TraceContext> {
    let mut carrier = HashMap::new();
    carrier.insert(TRACEPARENT.to_owned(), traceparent?.to_owned());
    if let Some(state) = tracestate.filter(|s| s.len() <= MAX_TRACE_STATE) {
        carrier.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    of_span_context(cx.span().span_context())
}

/// The `traceparent` and `tracestate` headers of `context`.
pub fn to_headers(context: &TraceContext) -> (String, Option<String>) {
    let cx = opentelemetry::Context::new().with_remote_span_context(span_context(context));
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    let parent = carrier.remove(TRACEPARENT).unwrap_or_default();
    (parent, carrier.remove(TRACESTATE).filter(|s| !s.is_empty()))
}

fn span_context(context: &TraceContext) -> SpanContext {
    let flags = if context.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        TraceId::from_bytes(context.trace_id),
        SpanId::from_bytes(context.span_id),
        flags,
        true,
        context
            .state
            .parse()
            .unwrap_or_else(|_| TraceState::default()),
    )
}

fn of_span_context(sc: &SpanContext) -> Option<TraceContext> {
    sc.is_valid().then(|| TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
        state: {
            let state = sc.trace_state().header();
            if state.len() <= MAX_TRACE_STATE {
                state
            } else {
                String::new()
            }
        },
    })
}

/// Makes `span` a child of `parent` (a caller's span, or an operation's
/// create). Without a parent the span keeps its place in the `tracing`
/// tree, or starts a trace.
pub fn adopt(span: &tracing::Span, parent: Option<&TraceContext>) {
    if let Some(parent) = parent {
        let cx = opentelemetry::Context::new().with_remote_span_context(span_context(parent));
        // Refused only when no exporter is installed: nothing to do then.
        let _ = span.set_parent(cx);
    }
}

/// The context of `span` when traces are exported; None otherwise.
pub fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    of_span_context(span.context().span().span_context())
}

/// Records `span`'s trace and span ids on its `trace_id` and `span_id`
/// fields, so that the log lines inside it lead to it.
pub fn label(span: &tracing::Span) {
    if let Some(cx) = context_of(span) {
        span.record("trace_id", cx.trace_id_hex());
        span.record("span_id", cx.span_id_hex());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_read_and_written_back_the_same() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = from_headers(Some(header), Some("vendor=x")).unwrap();
        assert_eq!(cx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cx.span_id_hex(), "00f067aa0ba902b7");
        assert!(cx.sampled);
        assert_eq!(
            to_headers(&cx),
            (header.to_owned(), Some("vendor=x".into()))
        );
        // Malformed ones are ignored.
        for bad in [
            "",
            "00-xyz",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert_eq!(from_headers(Some(bad), None), None, "{bad}");
        }
        // An overlong tracestate is dropped, the context kept.
        let long = "a=".to_owned() + &"b".repeat(MAX_TRACE_STATE);
        assert_eq!(from_headers(Some(header), Some(&long)).unwrap().state, "");
    }
}
