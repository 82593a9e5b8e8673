//! Fuzzes the List filter parser: any text parses or is refused, never a
//! panic, and what parses prints.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longrun::model::Filter;

fuzz_target!(|text: &str| {
    if let Ok(filter) = Filter::parse(text) {
        let _ = filter.to_string();
    }
});
