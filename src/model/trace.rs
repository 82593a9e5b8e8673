//! The trace an operation belongs to: the W3C trace context of the span
//! that created it (or of the caller, when this server exports no
//! traces), kept with the operation so that its attempts, its outside
//! worker and its webhooks continue the same trace. A few bytes: the ids,
//! the sampled flag and the vendors' `tracestate`, bounded.

/// The longest `tracestate` kept (W3C allows 32 members of 256 bytes;
/// more than this is dropped, never stored).
pub const MAX_TRACE_STATE: usize = 512;

/// A span's place in a trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
    /// The `tracestate` header as received, at most [`MAX_TRACE_STATE`]
    /// bytes.
    pub state: String,
}

impl TraceContext {
    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        self.trace_id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        self.span_id.iter().map(|b| format!("{b:02x}")).collect()
    }
}
