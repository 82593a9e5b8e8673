//! Fuzzes operation names, report names and request ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longrun::model::{OperationId, RequestId};

fuzz_target!(|text: &str| {
    if let Ok(id) = OperationId::parse_name(text) {
        assert_eq!(OperationId::parse_name(&id.name()), Ok(id));
    }
    let _ = OperationId::parse_in("reports", text);
    let _ = text.parse::<RequestId>();
    let _ = longrun::model::tenant::check_tenant_name(text);
});
