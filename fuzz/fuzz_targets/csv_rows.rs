//! Fuzzes CSV order files: the header, then every row, as an import reads
//! them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longrun::reports::rows::ColumnMap;

fuzz_target!(|data: &[u8]| {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(data);
    let mut records = reader.records();
    let Some(Ok(header)) = records.next() else {
        return;
    };
    let Ok(columns) = ColumnMap::from_header(header.iter()) else {
        return;
    };
    for (row, record) in records.enumerate() {
        let Ok(record) = record else { continue };
        let fields: Vec<&str> = record.iter().collect();
        let _ = columns.parse(row as u64 + 2, &fields);
    }
});
