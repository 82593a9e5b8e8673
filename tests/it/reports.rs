//! The report service over real gRPC: imports, reports, downloads, and the
//! bad inputs of each.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use longrun::pb::google::longrunning::{CancelOperationRequest, Operation, operation};
use longrun::pb::longrun::v1::report_service_client::ReportServiceClient;
use longrun::pb::longrun::v1::{
    CreateReportRequest, GetReportRequest, ImportOrdersRequest, ImportOrdersResponse,
    ReadReportRequest, Report, ReportFormat, State,
};
use longrun::reports::generate::{Spec, write_csv};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

async fn reports(server: &TestServer) -> ReportServiceClient<Channel> {
    ReportServiceClient::new(server.channel().await)
}

fn generated(count: u64, first: &str, last: &str, seed: u64) -> Vec<u8> {
    let spec = Spec {
        count,
        months: (first.parse().unwrap(), last.parse().unwrap()),
        seed,
    };
    let mut out = Vec::new();
    write_csv(&spec, &mut out).unwrap();
    out
}

/// Streams `csv` in chunks of `chunk` bytes.
async fn import(
    server: &TestServer,
    csv: &[u8],
    chunk: usize,
    request_id: &str,
) -> Result<Operation, tonic::Status> {
    let mut messages: Vec<ImportOrdersRequest> = csv
        .chunks(chunk.max(1))
        .map(|c| ImportOrdersRequest {
            csv_chunk: c.to_vec(),
            ..Default::default()
        })
        .collect();
    if let Some(first) = messages.first_mut() {
        first.request_id = request_id.to_owned();
    } else if !request_id.is_empty() {
        messages.push(ImportOrdersRequest {
            request_id: request_id.to_owned(),
            ..Default::default()
        });
    }
    reports(server)
        .await
        .import_orders(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

async fn imported(server: &TestServer, csv: &[u8]) -> ImportOrdersResponse {
    let op = import(server, csv, 64 * 1024, "")
        .await
        .expect("upload accepted");
    let done = wait_done(server, &op.name).await;
    assert_eq!(state(&done), State::Succeeded, "{done:?}");
    response(&done)
}

fn response<M: Message + Default>(op: &Operation) -> M {
    match &op.result {
        Some(operation::Result::Response(any)) => M::decode(any.value.as_slice()).unwrap(),
        other => panic!("expected a response, got {other:?}"),
    }
}

async fn report(server: &TestServer, month: &str, format: ReportFormat) -> Report {
    let op = reports(server)
        .await
        .create_report(CreateReportRequest {
            month: month.into(),
            format: format as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_done(server, &op.name).await;
    assert_eq!(state(&done), State::Succeeded, "{done:?}");
    assert_eq!(meta(&done).progress_percent, 100);
    response(&done)
}

async fn download(server: &TestServer, name: &str) -> Vec<u8> {
    let mut stream = reports(server)
        .await
        .read_report(ReadReportRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend(chunk.unwrap().data);
    }
    out
}

/// The test's own reading of a generated CSV: the rows of one month, the
/// latest of each order_id, in report order (created_at, then order_id).
fn month_rows(csv: &[u8], month: &str) -> Vec<Vec<String>> {
    let text = std::str::from_utf8(csv).unwrap();
    let mut latest: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines().skip(1) {
        let fields: Vec<String> = line.split(',').map(str::to_owned).collect();
        latest.insert(fields[0].clone(), fields);
    }
    let mut rows: Vec<Vec<String>> = latest
        .into_values()
        .filter(|f| f[1].starts_with(month))
        .collect();
    rows.sort_by(|a, b| (&a[1], &a[0]).cmp(&(&b[1], &b[0])));
    rows
}

/// (count, total, by status, ids) of one month of a generated CSV.
fn expected(csv: &[u8], month: &str) -> (i64, i64, HashMap<String, i64>, Vec<String>) {
    let rows = month_rows(csv, month);
    let mut by_status = HashMap::new();
    let mut total = 0;
    for r in &rows {
        total += r[4].parse::<i64>().unwrap();
        *by_status.entry(r[3].clone()).or_insert(0) += 1;
    }
    let ids = rows.iter().map(|r| r[0].clone()).collect();
    (rows.len() as i64, total, by_status, ids)
}

#[tokio::test]
async fn an_imported_month_reports_exactly_what_the_csv_says() {
    month_as_the_csv_says(TestServer::start().await).await;
}

#[tokio::test]
async fn on_postgresql_an_imported_month_reports_exactly_what_the_csv_says() {
    let Some(db) = crate::pg::TestDb::create().await else {
        return;
    };
    let url = db.url.clone();
    let server = TestServer::start_with(|c| {
        c.backend = longrun::store::Backend::Postgres(url);
    })
    .await;
    month_as_the_csv_says(server).await;
}

/// Imports 20,000 generated orders and then, in the same file, the first
/// 3,000 again with other amounts, in February: far apart, so the rows of
/// one order_id go to the store in different batches (and, where a store
/// takes several parts at once, must still end with the last row).
async fn month_as_the_csv_says(server: TestServer) {
    let mut csv = generated(20_000, "2024-01", "2024-04", 11);
    let again: Vec<String> = std::str::from_utf8(&csv)
        .unwrap()
        .lines()
        .skip(1)
        .take(3000)
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split(',').collect();
            format!(
                "{},2024-02-11T10:00:{:02}Z,{},{},{}\n",
                f[0],
                i % 60,
                f[2],
                f[3],
                7 + i
            )
        })
        .collect();
    csv.extend_from_slice(again.concat().as_bytes());
    let result = imported(&server, &csv).await;
    assert_eq!(result.imported, 23_000);
    assert_eq!(result.failed, 0);

    let report = report(&server, "2024-02", ReportFormat::Csv).await;
    let (count, total, by_status, ids) = expected(&csv, "2024-02");
    assert!(count > 1000);
    assert_eq!(report.order_count, count);
    assert_eq!(report.total_amount_cents, total);
    let counts = report.status_counts.unwrap();
    assert_eq!(counts.placed, by_status.get("placed").copied().unwrap_or(0));
    assert_eq!(
        counts.approved,
        by_status.get("approved").copied().unwrap_or(0)
    );
    assert_eq!(
        counts.delivered,
        by_status.get("delivered").copied().unwrap_or(0)
    );
    assert_eq!(
        counts.cancelled,
        by_status.get("cancelled").copied().unwrap_or(0)
    );
    assert!(report.name.starts_with("reports/"));

    // The file: every order of the month in created_at order, then TOTAL.
    let file = download(&server, &report.name).await;
    assert_eq!(file.len() as i64, report.size_bytes);
    assert_eq!(hex(&Sha256::digest(&file)), report.sha256);
    let text = String::from_utf8(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "order_id,created_at,customer_id,status,amount_cents"
    );
    assert_eq!(*lines.last().unwrap(), format!("TOTAL,,,,{total}"));
    let listed: Vec<String> = lines[1..lines.len() - 1]
        .iter()
        .map(|l| l.split(',').next().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids);

    // GetReport returns the same record.
    let got = reports(&server)
        .await
        .get_report(GetReportRequest {
            name: report.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, report);
    server.stop().await;
}

/// Waits until the operation reports progress (so it is mid-way), then
/// cancels it.
async fn cancel_once_progressing(server: &TestServer, name: &str) {
    let mut stream = server
        .watcher()
        .await
        .watch_operation(longrun::pb::longrun::v1::WatchOperationRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(PATIENCE, async {
        while let Some(item) = stream.next().await {
            let item = item.unwrap();
            assert!(!item.done, "it finished before it could be cancelled");
            if meta(&item).progress_percent > 0 {
                return;
            }
        }
    })
    .await
    .unwrap();
    server
        .operations()
        .await
        .cancel_operation(CancelOperationRequest { name: name.into() })
        .await
        .unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn json_reports_and_empty_months() {
    let server = TestServer::start().await;
    let csv = generated(3_000, "2024-05", "2024-05", 5);
    imported(&server, &csv).await;
    let report = report(&server, "2024-05", ReportFormat::Json).await;
    let file = download(&server, &report.name).await;
    let json: serde_json::Value = serde_json::from_slice(&file).expect("valid JSON");
    assert_eq!(json["month"], "2024-05");
    assert_eq!(json["orders"].as_array().unwrap().len(), 3_000);
    assert_eq!(json["totals"]["order_count"], 3_000);
    assert_eq!(
        json["totals"]["total_amount_cents"],
        report.total_amount_cents
    );

    let empty = self::report(&server, "1999-12", ReportFormat::Csv).await;
    assert_eq!(empty.order_count, 0);
    assert_eq!(empty.total_amount_cents, 0);
    let file = download(&server, &empty.name).await;
    assert_eq!(
        String::from_utf8(file).unwrap(),
        "order_id,created_at,customer_id,status,amount_cents\nTOTAL,,,,0\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn reimporting_replaces_rows_and_moves_them_between_months() {
    let server = TestServer::start().await;
    let csv = generated(2_000, "2024-01", "2024-02", 3);
    imported(&server, &csv).await;
    let before = report(&server, "2024-01", ReportFormat::Csv).await;
    imported(&server, &csv).await;
    let again = report(&server, "2024-01", ReportFormat::Csv).await;
    assert_eq!(before.order_count, again.order_count);
    assert_eq!(before.total_amount_cents, again.total_amount_cents);
    assert_eq!(before.sha256, again.sha256);

    // Move one January order to March, with columns in another order.
    let text = String::from_utf8(csv).unwrap();
    let jan = text
        .lines()
        .skip(1)
        .find(|l| l.contains(",2024-01-"))
        .unwrap();
    let f: Vec<&str> = jan.split(',').collect();
    let moved = format!(
        "amount_cents,status,created_at,order_id,customer_id\r\n{},{},2024-03-10T12:00:00Z,{},{}\r\n",
        f[4], f[3], f[0], f[2]
    );
    imported(&server, moved.as_bytes()).await;
    let jan = report(&server, "2024-01", ReportFormat::Csv).await;
    let march = report(&server, "2024-03", ReportFormat::Csv).await;
    assert_eq!(jan.order_count, before.order_count - 1);
    assert_eq!(march.order_count, 1);
    assert_eq!(march.total_amount_cents, f[4].parse::<i64>().unwrap());
    server.stop().await;
}

#[tokio::test]
async fn malformed_rows_are_reported_with_row_numbers_and_skipped() {
    let server = TestServer::start().await;
    let csv = "order_id,created_at,customer_id,status,amount_cents\n\
               a,2024-06-01T00:00:00Z,c1,placed,100\n\
               b,not-a-time,c1,placed,100\n\
               c,2024-06-02T00:00:00Z,c2,lost,100\n\
               d,2024-06-03T00:00:00Z,c3,approved,-4\n\
               e,2024-06-04T00:00:00Z,c4\n\
               ,2024-06-05T00:00:00Z,c5,placed,1\n\
               f,2024-06-06T00:00:00+02:00,c6,delivered,250\n";
    let result = imported(&server, csv.as_bytes()).await;
    assert_eq!(result.imported, 2);
    assert_eq!(result.failed, 5);
    let found: Vec<(i64, &str)> = result
        .errors
        .iter()
        .map(|e| (e.row, e.column.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (3, "created_at"),
            (4, "status"),
            (5, "amount_cents"),
            (6, ""),
            (7, "order_id"),
        ]
    );
    let june = report(&server, "2024-06", ReportFormat::Csv).await;
    assert_eq!(june.order_count, 2);
    assert_eq!(june.total_amount_cents, 350);
    server.stop().await;
}

#[tokio::test]
async fn bad_uploads_fail_the_call_before_any_operation_exists() {
    let server = TestServer::start_with(|c| c.max_upload_size = 4096).await;
    let header = b"order_id,created_at,customer_id,status,amount_cents\n".to_vec();
    let mut not_utf8 = header.clone();
    not_utf8.extend_from_slice(b"a,2024-01-01T00:00:00Z,\xff\xfe,placed,1\n");
    let mut too_big = header.clone();
    while too_big.len() < 5000 {
        too_big.extend_from_slice(b"a,2024-01-01T00:00:00Z,c,placed,1\n");
    }
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "empty"),
        (b"\n1,2,3\n".to_vec(), "no header"),
        (b"order_id,status\nx,placed\n".to_vec(), "missing"),
        (not_utf8, "UTF-8"),
        (too_big, "larger than"),
    ];
    for (body, needle) in cases {
        let err = import(&server, &body, 7, "").await.unwrap_err();
        assert_status(
            &err,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("csv_chunk"),
        );
        assert!(err.message().contains(needle), "{needle}: {err:?}");
    }
    // A multi-byte character split across chunks is fine.
    let mut split = header.clone();
    split.extend_from_slice("é1,2024-01-01T00:00:00Z,cé,placed,1\n".as_bytes());
    let op = import(&server, &split, 1, "")
        .await
        .expect("valid UTF-8 across chunks");
    wait_done(&server, &op.name).await;

    // Nothing was created by the refused uploads, and nothing was left on disk.
    let ops = server
        .operations()
        .await
        .list_operations(longrun::pb::google::longrunning::ListOperationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ops.operations.len(), 1);
    let leftovers: Vec<_> = std::fs::read_dir(server.data_dir.join("uploads"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    server.stop().await;
}

#[tokio::test]
async fn bad_report_requests_are_rejected() {
    let server = TestServer::start().await;
    let mut client = reports(&server).await;
    for (month, format, field) in [
        ("2024-13", ReportFormat::Csv, "month"),
        ("March", ReportFormat::Csv, "month"),
        ("2024-03", ReportFormat::Unspecified, "format"),
    ] {
        let err = client
            .create_report(CreateReportRequest {
                month: month.into(),
                format: format as i32,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT", Some(field));
    }
    let err = client
        .create_report(CreateReportRequest {
            month: "2024-03".into(),
            format: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("format"),
    );

    let unknown = "reports/0190b2d4-7d7c-7f7e-8000-000000000000";
    let err = client
        .get_report(GetReportRequest {
            name: unknown.into(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "NOT_FOUND", None);
    let err = client
        .read_report(ReadReportRequest {
            name: unknown.into(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "NOT_FOUND", None);
    let err = client
        .get_report(GetReportRequest {
            name: "operations/0190b2d4-7d7c-7f7e-8000-000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("name"),
    );

    // A Sleep operation's id is not a report.
    let op = start_sleep(&server, sleep(Duration::ZERO, 1)).await;
    wait_done(&server, &op.name).await;
    let as_report = op.name.replace("operations/", "reports/");
    let err = client
        .get_report(GetReportRequest { name: as_report })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "NOT_FOUND", None);
    server.stop().await;
}

#[tokio::test]
async fn imports_are_idempotent_by_request_id_and_content() {
    let server = TestServer::start().await;
    let csv = generated(100, "2024-01", "2024-01", 9);
    let rid = "6a2b9a60-95f3-4c6e-b1e8-7d5e1c3e9a01";
    let first = import(&server, &csv, 1000, rid).await.unwrap();
    let second = import(&server, &csv, 333, rid).await.unwrap();
    assert_eq!(first.name, second.name);
    let other = generated(100, "2024-01", "2024-01", 10);
    let err = import(&server, &other, 1000, rid).await.unwrap_err();
    assert_status(&err, Code::AlreadyExists, "REQUEST_ID_CONFLICT", None);
    wait_done(&server, &first.name).await;
    server.stop().await;
}

#[tokio::test]
async fn a_cancelled_report_stops_midway_and_leaves_no_file() {
    let server = TestServer::start().await;
    let csv = generated(120_000, "2024-07", "2024-07", 21);
    imported(&server, &csv).await;
    for format in [ReportFormat::Json, ReportFormat::Pdf] {
        let op = reports(&server)
            .await
            .create_report(CreateReportRequest {
                month: "2024-07".into(),
                format: format as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        cancel_once_progressing(&server, &op.name).await;
        let done = wait_done(&server, &op.name).await;
        assert_eq!(state(&done), State::Cancelled, "{format:?}");
        assert!(meta(&done).progress_percent < 100, "{format:?}");
        let files: Vec<_> = std::fs::read_dir(server.data_dir.join("reports"))
            .unwrap()
            .collect();
        assert!(
            files.is_empty(),
            "a cancelled {format:?} report left {files:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn report_files_expire_with_their_operation() {
    let server = TestServer::start_with(|c| c.engine.retention = Duration::from_millis(500)).await;
    imported(&server, &generated(100, "2024-01", "2024-01", 1)).await;
    let report = report(&server, "2024-01", ReportFormat::Csv).await;
    let uuid = report.name.trim_start_matches("reports/").to_owned();
    let path = server.data_dir.join("reports").join(format!("{uuid}.csv"));
    assert!(path.exists());
    wait_gone(&server, &format!("operations/{uuid}")).await;
    assert!(!path.exists(), "the report file outlived its operation");
    let err = reports(&server)
        .await
        .get_report(GetReportRequest { name: report.name })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn a_cancelled_import_keeps_the_rows_it_committed() {
    let server = TestServer::start().await;
    let csv = generated(200_000, "2024-08", "2024-08", 8);
    let op = import(&server, &csv, 1 << 20, "").await.unwrap();
    cancel_once_progressing(&server, &op.name).await;
    let done = wait_done(&server, &op.name).await;
    assert_eq!(state(&done), State::Cancelled);
    let message = meta(&done).status_message;
    let kept: i64 = message
        .split("the ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no row count in {message:?}"));
    assert!(kept > 0 && kept < 200_000, "{message}");
    let august = report(&server, "2024-08", ReportFormat::Csv).await;
    assert_eq!(august.order_count, kept, "{message}");
    server.stop().await;
}

/// A PDF read back with lopdf: for each page, the strings it shows, as
/// lines (by baseline, top down) of cells (left to right); and what the
/// shared page-count form draws.
struct PdfText {
    pages: Vec<Vec<Vec<String>>>,
    page_count: String,
}

/// WinAnsi agrees with Latin-1 on everything a test writes.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|b| char::from(*b)).collect()
}

/// Every operator a PDF content stream may use (ISO 32000-1, annex A).
const OPERATORS: &[&str] = &[
    "b", "B", "b*", "B*", "BDC", "BI", "BMC", "BT", "BX", "c", "cm", "CS", "cs", "d", "d0", "d1",
    "Do", "DP", "EI", "EMC", "ET", "EX", "f", "F", "f*", "G", "g", "gs", "h", "i", "ID", "j", "J",
    "K", "k", "l", "m", "M", "MP", "n", "q", "Q", "re", "RG", "rg", "ri", "s", "S", "SC", "sc",
    "SCN", "scn", "sh", "T*", "Tc", "Td", "TD", "Tf", "Tj", "TJ", "TL", "Tm", "Tr", "Ts", "Tw",
    "Tz", "v", "w", "W", "W*", "y", "'", "\"",
];

/// The strings a content stream shows, with where; every operator in it
/// must be one PDF defines.
fn shown(content: &[u8]) -> Vec<(f32, f32, String)> {
    let content = lopdf::content::Content::decode(content).expect("a content stream lopdf reads");
    let (mut x, mut y) = (0.0, 0.0);
    let mut out = Vec::new();
    for op in content.operations {
        assert!(
            OPERATORS.contains(&op.operator.as_str()),
            "not a PDF operator: {:?}",
            op.operator
        );
        match op.operator.as_str() {
            "Tm" => {
                x = op.operands[4].as_float().unwrap();
                y = op.operands[5].as_float().unwrap();
            }
            "Tj" => out.push((x, y, latin1(op.operands[0].as_str().unwrap()))),
            _ => {}
        }
    }
    out
}

fn read_pdf(bytes: &[u8]) -> PdfText {
    let doc = lopdf::Document::load_mem(bytes).expect("a PDF lopdf reads");
    let mut pages = Vec::new();
    for (_, id) in doc.get_pages() {
        let mut lines: std::collections::BTreeMap<i64, Vec<(f32, String)>> = Default::default();
        for (x, y, text) in shown(&doc.get_page_content(id).unwrap()) {
            lines
                .entry(-(y * 10.0).round() as i64)
                .or_default()
                .push((x, text));
        }
        pages.push(
            lines
                .into_values()
                .map(|mut line| {
                    line.sort_by(|a, b| a.0.total_cmp(&b.0));
                    line.into_iter().map(|(_, t)| t).collect()
                })
                .collect(),
        );
    }
    // No array of kids grows with the month.
    for object in doc.objects.values() {
        if let Ok(kids) = object
            .as_dict()
            .and_then(|d| d.get(b"Kids"))
            .and_then(|k| k.as_array())
        {
            assert!(
                kids.len() <= 129,
                "a page-tree node with {} kids",
                kids.len()
            );
        }
    }
    let form = doc
        .objects
        .values()
        .filter_map(|o| o.as_stream().ok())
        .find(|s| s.dict.get(b"Subtype").and_then(|t| t.as_name()).ok() == Some(b"Form"))
        .expect("the page-count form");
    let drawn = shown(&form.decompressed_content().unwrap_or(form.content.clone()));
    PdfText {
        pages,
        page_count: drawn.into_iter().map(|(_, _, t)| t).collect(),
    }
}

/// The test's own spelling of 1234567: "1,234,567".
fn grouped(n: i64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 1234567 cents as "12,345.67".
fn money(cents: i64) -> String {
    format!("{}.{:02}", grouped(cents / 100), cents % 100)
}

fn has_line(page: &[Vec<String>], cells: &[&str]) -> bool {
    page.iter()
        .any(|line| line.windows(cells.len()).any(|w| w == cells))
}

#[tokio::test]
async fn pdf_reports_show_every_order_and_the_totals() {
    let server = TestServer::start().await;
    // Enough orders for more pages than one page-tree node holds (128).
    let csv = generated(24_000, "2024-06", "2024-08", 29);
    imported(&server, &csv).await;
    let report = report(&server, "2024-07", ReportFormat::Pdf).await;
    let rows = month_rows(&csv, "2024-07");
    let (count, total, by_status, _) = expected(&csv, "2024-07");
    assert!(count > 60 * 130, "{count}");
    assert_eq!(report.order_count, count);
    assert_eq!(report.total_amount_cents, total);
    assert_eq!(report.format, ReportFormat::Pdf as i32);

    let file = download(&server, &report.name).await;
    assert!(file.starts_with(b"%PDF-"));
    assert_eq!(file.len() as i64, report.size_bytes);
    assert_eq!(hex(&Sha256::digest(&file)), report.sha256);
    let pdf = read_pdf(&file);
    assert_eq!(pdf.pages.len() as i32, report.page_count);
    assert_eq!(pdf.page_count, report.page_count.to_string());
    // A summary page, then at most 60 orders a page.
    assert!(report.page_count as i64 > (count + 59) / 60);

    // The summary: the month, the totals, the count and share of each
    // status, all from the test's own reading of the CSV.
    let summary = &pdf.pages[0];
    assert!(has_line(summary, &["July 2024"]), "{summary:?}");
    assert!(
        has_line(summary, &["Orders", &grouped(count)]),
        "{summary:?}"
    );
    assert!(has_line(summary, &["Amount", &money(total)]), "{summary:?}");
    assert!(
        has_line(summary, &["Totals (amounts in USD)"]),
        "{summary:?}"
    );
    let amount_of = |status: &str| -> i64 {
        rows.iter()
            .filter(|r| r[3] == status)
            .map(|r| r[4].parse::<i64>().unwrap())
            .sum()
    };
    for status in ["placed", "approved", "delivered", "cancelled"] {
        let n = by_status.get(status).copied().unwrap_or(0);
        let share = format!("{:.1}%", n as f64 * 100.0 / count as f64);
        assert!(
            has_line(
                summary,
                &[status, &grouped(n), &share, &money(amount_of(status))]
            ),
            "{status}: {summary:?}"
        );
    }
    // Totals with and without the cancelled orders, said as such.
    let cancelled = by_status.get("cancelled").copied().unwrap_or(0);
    let kept_amount = total - amount_of("cancelled");
    assert!(
        has_line(summary, &["Not cancelled", &grouped(count - cancelled)]),
        "{summary:?}"
    );
    assert!(
        has_line(summary, &["Their amount", &money(kept_amount)]),
        "{summary:?}"
    );
    assert_eq!(report.amount_not_cancelled_cents, kept_amount);
    assert_eq!(report.currency, "USD");
    // The chart labels every day of July.
    assert!(has_line(summary, &["29", "30", "31"]), "{summary:?}");

    // Every page numbers itself; every table page repeats the heads; the
    // rows, across pages, are exactly the month's orders in order.
    let mut listed = Vec::new();
    for (i, page) in pdf.pages.iter().enumerate() {
        let footer = format!("Page {} of ", i + 1);
        assert!(has_line(page, &[&footer]), "page {}: {page:?}", i + 1);
        if i == 0 {
            continue;
        }
        assert!(
            has_line(
                page,
                &[
                    "No.",
                    "Order",
                    "Created (UTC)",
                    "Customer",
                    "Status",
                    "Amount (USD)"
                ]
            ),
            "page {}",
            i + 1
        );
        for line in page {
            if line.len() == 6 && line[0].parse::<usize>().is_ok() {
                listed.push(line.clone());
            }
        }
    }
    assert_eq!(listed.len(), rows.len());
    for (i, (line, row)) in listed.iter().zip(&rows).enumerate() {
        let created = row[1].replace('T', " ").replace('Z', "");
        let amount = money(row[4].parse().unwrap());
        let want = [
            (i + 1).to_string(),
            row[0].clone(),
            created,
            row[2].clone(),
            row[3].clone(),
            amount,
        ];
        assert_eq!(line[..], want, "row {}", i + 1);
    }
    let last = pdf.pages.last().unwrap();
    let orders = format!("{} orders", grouped(count));
    assert!(
        has_line(last, &["Total", &orders, &money(total)]),
        "{last:?}"
    );
    let kept = format!("{} orders", grouped(count - cancelled));
    assert!(
        has_line(last, &["Not cancelled", &kept, &money(kept_amount)]),
        "{last:?}"
    );

    // An empty month: the summary and one table page saying so.
    let empty = self::report(&server, "1999-11", ReportFormat::Pdf).await;
    assert_eq!((empty.order_count, empty.page_count), (0, 2));
    let pdf = read_pdf(&download(&server, &empty.name).await);
    assert_eq!(pdf.pages.len(), 2);
    assert_eq!(pdf.page_count, "2");
    assert!(has_line(&pdf.pages[0], &["Orders", "0"]));
    assert!(has_line(&pdf.pages[0], &["Amount", "0.00"]));
    assert!(has_line(&pdf.pages[1], &["No orders in November 1999."]));
    assert!(has_line(&pdf.pages[1], &["Total", "0 orders", "0.00"]));

    // Text a PDF string must escape prints as it is; characters outside
    // WinAnsi print as '?'; an id too long for its column is cut, ending
    // in WinAnsi's ellipsis (0x85); a huge amount is still there in full.
    let long = "x".repeat(100);
    let odd = format!(
        "order_id,created_at,customer_id,status,amount_cents\n\
         o-(1)\\,2023-02-01T00:00:00Z,caf\u{e9} \u{65e5},placed,5\n\
         {long},2023-02-02T00:00:00Z,c)(,approved,999999999999999\n"
    );
    imported(&server, odd.as_bytes()).await;
    let odd = self::report(&server, "2023-02", ReportFormat::Pdf).await;
    let pdf = read_pdf(&download(&server, &odd.name).await);
    let rows: Vec<&Vec<String>> = pdf.pages[1].iter().filter(|l| l.len() == 6).collect();
    assert_eq!(
        rows[1..],
        [
            &vec![
                "1".to_owned(),
                "o-(1)\\".to_owned(),
                "2023-02-01 00:00:00".to_owned(),
                "caf\u{e9} ?".to_owned(),
                "placed".to_owned(),
                "0.05".to_owned(),
            ],
            &vec![
                "2".to_owned(),
                format!("{}\u{85}", "x".repeat(29)),
                "2023-02-02 00:00:00".to_owned(),
                "c)(".to_owned(),
                "approved".to_owned(),
                "9,999,999,999,999.99".to_owned(),
            ],
        ],
        "{:?}",
        pdf.pages[1]
    );
    server.stop().await;
}

#[tokio::test]
async fn csv_reports_never_hand_a_spreadsheet_a_formula() {
    let server = TestServer::start().await;
    let csv = "order_id,created_at,customer_id,status,amount_cents\n\
               =1+1,2024-06-01T00:00:00Z,\"=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\",placed,100\n\
               @sum,2024-06-02T00:00:00Z,+49 30 1234,approved,200\n\
               o-3,2024-06-03T00:00:00Z,-minus,delivered,300\n";
    imported(&server, csv.as_bytes()).await;
    let report = report(&server, "2024-06", ReportFormat::Csv).await;
    let file = String::from_utf8(download(&server, &report.name).await).unwrap();
    let rows: Vec<Vec<String>> = csv::Reader::from_reader(file.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    assert_eq!(rows[0][0], "'=1+1", "{file}");
    assert_eq!(
        rows[0][2], "'=HYPERLINK(\"http://evil.example\",\"x\")",
        "{file}"
    );
    assert_eq!(
        (rows[1][0].as_str(), rows[1][2].as_str()),
        ("'@sum", "'+49 30 1234")
    );
    assert_eq!(
        (rows[2][0].as_str(), rows[2][2].as_str()),
        ("o-3", "'-minus")
    );
    // The JSON report keeps the values as they are: it is data, not a sheet.
    let report = self::report(&server, "2024-06", ReportFormat::Json).await;
    let json: serde_json::Value =
        serde_json::from_slice(&download(&server, &report.name).await).unwrap();
    assert_eq!(json["orders"][0]["order_id"], "=1+1");
    server.stop().await;
}

#[tokio::test]
async fn a_report_names_the_currency_its_amounts_are_in() {
    let server = TestServer::start().await;
    imported(&server, generated(200, "2024-02", "2024-02", 3).as_slice()).await;
    let made = reports(&server)
        .await
        .create_report(CreateReportRequest {
            month: "2024-02".into(),
            format: ReportFormat::Pdf as i32,
            currency: "EUR".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_done(&server, &made.name).await;
    let report: Report = response(&done);
    assert_eq!(report.currency, "EUR");
    let pdf = read_pdf(&download(&server, &report.name).await);
    assert!(has_line(&pdf.pages[0], &["Totals (amounts in EUR)"]));
    assert!(has_line(&pdf.pages[1], &["Amount (EUR)"]));
    let refused = reports(&server)
        .await
        .create_report(CreateReportRequest {
            month: "2024-02".into(),
            currency: "euro".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(
        &refused,
        tonic::Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("currency"),
    );
    server.stop().await;
}
