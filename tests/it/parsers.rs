//! Property tests of every parser that reads outside input: the List
//! filter, page tokens, operation and report names, request ids,
//! durations, CSV headers and rows, tenant names and the auth file.
//! Arbitrary input must give a value or a clear error, never a panic; and
//! what the server itself writes must read back unchanged.

use std::time::Duration;

use longrun::auth::AuthFile;
use longrun::engine::page_token::PageTokens;
use longrun::model::Filter;
use longrun::model::tenant::check_tenant_name;
use longrun::model::{OperationId, RequestId};
use longrun::reports::rows::ColumnMap;
use proptest::prelude::*;

/// Text that looks a little like each grammar, to get past the first byte.
fn filterish() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        Just("done".to_owned()),
        Just("state".to_owned()),
        Just("kind".to_owned()),
        Just("tenant".to_owned()),
        Just("create_time".to_owned()),
        Just("AND".to_owned()),
        Just("=".to_owned()),
        Just("!=".to_owned()),
        Just("<=".to_owned()),
        Just("\"".to_owned()),
        Just("RUNNING".to_owned()),
        Just("2024-01-01T00:00:00Z".to_owned()),
        "[ -~]{0,8}",
        "\\PC{0,4}",
    ];
    prop::collection::vec(word, 0..12).prop_map(|words| words.join(" "))
}

fn condition() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::bool::ANY.prop_map(|b| format!("done = {b}")),
        prop::sample::select(vec!["QUEUED", "RUNNING", "SUCCEEDED", "FAILED"])
            .prop_map(|s| format!("state != {s}")),
        "[a-z.]{1,20}".prop_map(|k| format!("kind = \"{k}\"")),
        "[a-z0-9]{1,10}".prop_map(|t| format!("tenant = {t}")),
        (1970i32..2200, 1u8..=12, 1u8..=28)
            .prop_map(|(y, m, d)| format!("create_time >= \"{y:04}-{m:02}-{d:02}T00:00:00Z\"")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn filters_parse_or_explain(text in filterish()) {
        match Filter::parse(&text) {
            Ok(filter) => { let _ = filter.to_string(); }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn arbitrary_text_never_breaks_the_filter(text in "\\PC{0,64}") {
        let _ = Filter::parse(&text);
    }

    #[test]
    fn well_formed_filters_always_parse(conditions in prop::collection::vec(condition(), 0..5)) {
        let text = conditions.join(" AND ");
        prop_assert!(Filter::parse(&text).is_ok(), "{}", text);
    }

    #[test]
    fn page_tokens_open_only_what_was_issued(
        key in prop::collection::vec(any::<u8>(), 32),
        noise in "\\PC{0,80}",
        bytes in any::<[u8; 16]>(),
    ) {
        let tokens = PageTokens::new(key);
        let filter = Filter::default();
        prop_assert!(tokens.open(&noise, &filter).is_err());
        let id = OperationId::from_bytes(bytes);
        let issued = tokens.issue(id, &filter);
        prop_assert_eq!(tokens.open(&issued, &filter), Ok(id));
        // Any change to an issued token is caught.
        let mut tampered = issued.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        prop_assert!(tokens.open(&tampered, &filter).is_err());
    }

    #[test]
    fn names_parse_or_explain(text in "(operations/|reports/)?[-0-9a-fA-F]{0,40}|\\PC{0,40}") {
        let _ = OperationId::parse_name(&text);
        let _ = OperationId::parse_in("reports", &text);
        let _ = text.parse::<RequestId>();
    }

    #[test]
    fn names_round_trip(bytes in any::<[u8; 16]>()) {
        let id = OperationId::from_bytes(bytes);
        prop_assert_eq!(OperationId::parse_name(&id.name()), Ok(id));
        prop_assert_eq!(OperationId::parse_in("reports", &format!("reports/{}", id.uuid())), Ok(id));
    }

    #[test]
    fn durations_are_checked(seconds in any::<i64>(), nanos in any::<i32>()) {
        let value = prost_types::Duration { seconds, nanos };
        let parsed = longrun::pb::convert::duration("timeout", &value);
        let valid = seconds >= 0 && (0..1_000_000_000).contains(&nanos);
        prop_assert_eq!(parsed.is_ok(), valid);
        if let Ok(d) = parsed {
            prop_assert_eq!(d, Duration::new(seconds as u64, nanos as u32));
        }
    }

    #[test]
    fn csv_headers_and_rows_parse_or_explain(
        header in prop::collection::vec("[a-z_]{0,12}|\\PC{0,6}", 0..8),
        row in prop::collection::vec("\\PC{0,24}", 0..8),
        number in any::<u64>(),
    ) {
        let canonical = ["order_id", "created_at", "customer_id", "status", "amount_cents"];
        for columns in [header.iter().map(String::as_str).collect::<Vec<_>>(), canonical.to_vec()] {
            if let Ok(map) = ColumnMap::from_header(columns) {
                let fields: Vec<&str> = row.iter().map(String::as_str).collect();
                match map.parse(number, &fields) {
                    Ok(order) => prop_assert!(!order.order_id.is_empty()),
                    Err(e) => prop_assert!(!e.reason.is_empty()),
                }
            }
        }
    }

    #[test]
    fn tenant_names_are_checked_without_panicking(text in "\\PC{0,80}") {
        if check_tenant_name(&text).is_ok() {
            prop_assert!(text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'));
        }
    }

    #[test]
    fn auth_files_parse_or_explain(text in "(\\[\\[principal\\]\\]\\n|name = \"[a-z]{0,5}\"\\n|tenant = \"\\PC{0,5}\"\\n|roles = \\[\"(reader|writer|root)\"\\]\\n|token_sha256 = \"[0-9a-f]{0,64}\"\\n|\\PC{0,10}){0,12}") {
        match AuthFile::parse(&text) {
            Ok(file) => { let _ = file.len(); }
            Err(e) => prop_assert!(!e.0.is_empty()),
        }
    }

    #[test]
    fn generated_auth_files_parse(
        people in prop::collection::vec(("[a-z]{1,12}", "[a-z0-9][a-z0-9_-]{0,20}", 0usize..3, any::<[u8; 32]>()), 0..10),
    ) {
        let mut text = String::new();
        let mut names = std::collections::HashSet::new();
        let mut digests = std::collections::HashSet::new();
        for (name, tenant, role, digest) in &people {
            if !names.insert(name.clone()) || !digests.insert(*digest) {
                continue;
            }
            let role = ["reader", "writer", "admin"][*role];
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            text.push_str(&format!(
                "[[principal]]\nname = \"{name}\"\ntenant = \"{tenant}\"\nroles = [\"{role}\"]\ntoken_sha256 = \"{hex}\"\n"
            ));
        }
        let file = AuthFile::parse(&text);
        prop_assert!(file.is_ok(), "{:?}\n{}", file.err(), text);
        prop_assert_eq!(file.unwrap().len(), names.len());
    }
}
