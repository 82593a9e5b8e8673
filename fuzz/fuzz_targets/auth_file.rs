//! Fuzzes the auth file parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longrun::auth::AuthFile;

fuzz_target!(|text: &str| {
    let _ = AuthFile::parse(text);
});
