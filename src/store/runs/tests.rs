//! The run format and rules on their own: chunks, manifests, merging,
//! tiers, and the entries a call writes.

use super::*;

fn put(key: &str, seq: u64, value: &str) -> Entry {
    Entry {
        key: key.into(),
        seq,
        value: Some(value.into()),
    }
}

fn kill(key: &str, seq: u64) -> Entry {
    Entry {
        key: key.into(),
        seq,
        value: None,
    }
}

fn source(entries: Vec<Entry>) -> std::vec::IntoIter<StoreResult<Entry>> {
    entries.into_iter().map(Ok).collect::<Vec<_>>().into_iter()
}

#[test]
fn a_chunk_reads_back_as_written_and_damage_is_reported() {
    let entries = vec![put("a", 1, ""), kill("b", 7), put("c", 300, "xyz")];
    let bytes = encode_chunk(&entries);
    assert_eq!(Vec::from(decode_chunk(&bytes).unwrap()), entries);
    assert!(decode_chunk(&bytes[..bytes.len() - 1]).is_err());
    assert!(decode_chunk(&[0x80]).is_err());
}

#[test]
fn chunks_close_at_their_size_and_keep_every_entry() {
    let entries: Vec<Entry> = (0..1000)
        .map(|i| put(&format!("{i:04}"), 1, "0123456789"))
        .collect();
    let chunks: Vec<&[Entry]> = chunks(&entries).collect();
    // 18 bytes an entry: 342 to a chunk.
    assert_eq!(
        chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
        [342, 342, 316]
    );
    assert_eq!(chunks.concat(), entries);
    assert_eq!(super::chunks(&[]).count(), 0);
}

#[test]
fn a_manifest_reads_back_as_written() {
    let manifest = Manifest {
        live: vec![Run {
            id: 9,
            entries: 1000,
            least: b"a".to_vec(),
            greatest: b"zz".to_vec(),
        }],
        stale: vec![3, 4],
    };
    assert_eq!(Manifest::decode(&manifest.encode()).unwrap(), manifest);
    assert_eq!(Manifest::decode(&[]).ok(), None);
    let mut trailing = manifest.encode();
    trailing.push(0);
    assert!(Manifest::decode(&trailing).is_err());
}

#[test]
fn the_latest_version_of_each_key_wins_kills_included() {
    let old = source(vec![
        put("a", 1, "a1"),
        put("b", 1, "b1"),
        put("d", 1, "d1"),
    ]);
    let new = source(vec![kill("a", 2), put("b", 2, "b2"), put("c", 2, "c2")]);
    let merged: Vec<Entry> = Merge::new(vec![new, old]).map(Result::unwrap).collect();
    assert_eq!(
        merged,
        vec![
            kill("a", 2),
            put("b", 2, "b2"),
            put("c", 2, "c2"),
            put("d", 1, "d1")
        ]
    );
    // A later write over a kill brings the key back.
    let merged: Vec<Entry> = Merge::new(vec![
        source(vec![kill("a", 2)]),
        source(vec![put("a", 3, "a3")]),
    ])
    .map(Result::unwrap)
    .collect();
    assert_eq!(merged, vec![put("a", 3, "a3")]);
}

#[test]
fn a_tier_is_merged_once_it_holds_eight_runs() {
    let run = |id, entries| Run {
        id,
        entries,
        least: vec![0],
        greatest: vec![1],
    };
    // 512 to 4,095 entries share a tier; 5,000 is the next one up.
    let mut live = vec![run(1, 5000)];
    live.extend((2..9).map(|id| run(id, 400 * id + 100)));
    assert_eq!(plan(&live), None);
    live.push(run(9, 4095));
    assert_eq!(plan(&live), Some((2..10).collect()));
    assert_eq!(plan(&[]), None);
}

#[test]
fn a_merged_run_closes_chunks_at_their_size_and_lists_its_bounds() {
    // 15 bytes for each value, 5 for the kill: a chunk of 20 bytes
    // closes with the kill.
    let mut kept = MergedRun::new(9, Family::Month(*b"202403"), 3, 20, false);
    let mut chunks = Vec::new();
    for entry in [
        put("a", 1, "0123456789"),
        kill("b", 2),
        put("c", 1, "0123456789"),
    ] {
        chunks.extend(kept.push(entry));
    }
    let (last, listed, filter) = kept.finish();
    assert_eq!(filter, None, "only location runs have filters");
    assert_eq!(chunks, vec![vec![put("a", 1, "0123456789"), kill("b", 2)]]);
    assert_eq!(last, Some(vec![put("c", 1, "0123456789")]));
    let listed = listed.unwrap();
    assert_eq!((listed.id, listed.entries), (9, 3));
    assert_eq!(
        (listed.least, listed.greatest),
        (b"a".to_vec(), b"c".to_vec())
    );

    // Merging everything a family holds leaves kills out; a run of
    // nothing but kills is not listed.
    let mut everything = MergedRun::new(10, Family::Locations, 1, 20, true);
    assert_eq!(everything.push(kill("b", 2)), None);
    assert_eq!(everything.finish(), (None, None, None));
}

#[test]
fn a_location_runs_filter_lets_through_every_key_it_holds() {
    let keys: Vec<String> = (0..1000).map(|i| format!("o{i:05}")).collect();
    let entries: Vec<Entry> = keys.iter().map(|k| put(k, 1, "at")).collect();
    let mut merged = MergedRun::new(11, Family::Locations, 1000, 1 << 20, false);
    for entry in entries.clone() {
        assert_eq!(merged.push(entry), None);
    }
    let (_, listed, filter) = merged.finish();
    let (listed, filter) = (listed.unwrap(), filter.unwrap());
    // The same filter whether built by a merge or for a written run.
    assert_eq!(Family::Locations.filter_of(&entries), Some(filter.clone()));
    let ids: Vec<&str> = keys.iter().map(String::as_str).collect();
    let held = may_hold(Some(&filter), &listed, &ids).unwrap();
    assert_eq!(held, ids);
    // Keys it does not hold mostly stay out, and those outside its
    // bounds always do.
    let others: Vec<String> = (0..1000).map(|i| format!("o{i:05}x")).collect();
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    assert!(may_hold(Some(&filter), &listed, &others).unwrap().len() < 50);
    assert_eq!(may_hold(Some(&filter), &listed, &["a", "z"]), Some(vec![]));
    // A run without a filter, or with one this version cannot read, is
    // read through.
    assert_eq!(may_hold(None, &listed, &ids), None);
    assert_eq!(may_hold(Some(&[9, 9]), &listed, &ids), None);
    assert_eq!(entry_in(&entries, b"o00500"), Some(&entries[500]));
    assert_eq!(entry_in(&entries, b"o00500x"), None);
}
