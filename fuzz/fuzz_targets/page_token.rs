//! Fuzzes page-token opening: nothing but an issued token may open.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longrun::model::Filter;
use longrun::engine::page_token::PageTokens;

fuzz_target!(|text: &str| {
    let tokens = PageTokens::new(vec![7; 32]);
    assert!(tokens.open(text, &Filter::default()).is_err());
});
