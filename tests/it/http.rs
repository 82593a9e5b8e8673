//! The HTTP/JSON face, through the real server with a real HTTP client
//! (reqwest over HTTP/1.1 on the gRPC listener): status codes, headers,
//! bodies, errors, idempotency and the door.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Person, TestServer, auth_toml};
use longrun::pb::longrun::v1::diagnostics_client::DiagnosticsClient;

/// A client of `server`'s HTTP face, with `token` as its bearer.
struct Http {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Http {
    fn new(server: &TestServer, token: Option<&str>) -> Self {
        Self {
            client: reqwest::Client::builder().http1_only().build().unwrap(),
            base: format!("http://{}", server.addr),
            token: token.map(str::to_owned),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends, and returns the status, the headers and the JSON body.
    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let response = builder.send().await.expect("the server answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, headers, body)
    }

    /// POSTs a create to `path` and returns the operation's Location,
    /// checking that it was accepted.
    async fn create(&self, path: &str, body: Value) -> String {
        let (status, headers, op) = self.post(path, body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{op}");
        headers["location"].to_str().unwrap().to_owned()
    }

    /// Waits for the operation at `location` (`:wait`, 30 s) and returns
    /// its JSON.
    async fn wait(&self, location: &str) -> Value {
        self.post(&format!("{location}:wait"), json!({"timeout": "30s"}))
            .await
            .2
    }

    async fn get(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    async fn post(
        &self,
        path: &str,
        body: Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.send(json_body(self.request(reqwest::Method::POST, path), &body))
            .await
    }
}

/// `body` as the request's JSON.
fn json_body(builder: reqwest::RequestBuilder, body: &Value) -> reqwest::RequestBuilder {
    builder
        .header("content-type", "application/json")
        .body(body.to_string())
}

/// Checks an AIP-193 error body: its code, status name and ErrorInfo
/// reason, and the BadRequest field when one is named.
fn assert_error(
    status: StatusCode,
    body: &Value,
    want: StatusCode,
    name: &str,
    reason: &str,
    field: Option<&str>,
) {
    assert_eq!(status, want, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], want.as_u16(), "{body}");
    assert_eq!(error["status"], name, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let details = error["details"].as_array().expect("details");
    let info = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        .unwrap_or_else(|| panic!("no ErrorInfo in {body}"));
    assert_eq!(info["reason"], reason, "{body}");
    assert_eq!(info["domain"], "longrun", "{body}");
    if let Some(field) = field {
        let bad = details
            .iter()
            .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
            .unwrap_or_else(|| panic!("no BadRequest in {body}"));
        assert!(
            bad["fieldViolations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["field"] == field),
            "{body}"
        );
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

#[tokio::test]
async fn an_operation_is_created_polled_waited_listed_and_deleted() {
    let server = TestServer::start().await;
    let http = Http::new(&server, None);

    let (status, headers, op) = http
        .post(
            "/v1/diagnostics:sleep",
            json!({"duration": "1s", "steps": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    let name = op["name"].as_str().unwrap().to_owned();
    let location = headers["location"].to_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/{name}"));
    assert_eq!(op["done"], Value::Null, "{op}");
    assert!(retry_after(&headers).is_some_and(|s| s >= 1));

    // Polling the Location: 200 and the operation, always.
    let (status, headers, polled) = http.get(&location).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(polled["name"], name.as_str());
    if polled["done"] != true {
        assert!(retry_after(&headers).is_some_and(|s| s >= 1), "{headers:?}");
    }

    let (status, headers, done) = http
        .post(&format!("{location}:wait"), json!({"timeout": "30s"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["done"], true, "{done}");
    assert_eq!(done["metadata"]["state"], "SUCCEEDED", "{done}");
    assert!(
        done["response"]["@type"]
            .as_str()
            .unwrap()
            .ends_with("SleepResponse")
    );
    assert!(
        retry_after(&headers).is_none(),
        "a done operation has no Retry-After"
    );

    let (status, _, listed) = http.get("/v1/operations?page_size=10").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert!(
        listed["operations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == name.as_str())
    );

    let (status, _, deleted) = http
        .send(http.request(reqwest::Method::DELETE, &location))
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted, json!({}));
    let (status, _, body) = http.get(&location).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "NOT_FOUND",
        None,
    );
    server.stop().await;
}

#[tokio::test]
async fn a_cancel_over_http_ends_the_operation_cancelled() {
    let server = TestServer::start().await;
    let http = Http::new(&server, None);
    let location = http
        .create("/v1/diagnostics:sleep", json!({"duration": "60s"}))
        .await;
    let (status, _, body) = http.post(&format!("{location}:cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = http.wait(&location).await;
    assert_eq!(done["done"], true, "{done}");
    assert_eq!(done["error"]["code"], 1, "{done}");
    // Cancelling what is done changes nothing and is no error, as in gRPC.
    let (status, _, body) = http.post(&format!("{location}:cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, _, after) = http.get(&location).await;
    assert_eq!(after, done);
    server.stop().await;
}

#[tokio::test]
async fn idempotency_keys_follow_the_draft() {
    let server = TestServer::start().await;
    let http = Http::new(&server, None);
    let key = "\"0b6e4a52-8f0d-4d7e-9a51-3c1f2e4d5b6a\"";
    let create = |body: Value, key: &str| {
        json_body(
            http.request(reqwest::Method::POST, "/v1/diagnostics:sleep")
                .header("idempotency-key", key),
            &body,
        )
    };
    let (first, _, a) = http.send(create(json!({"duration": "0s"}), key)).await;
    let (again, _, b) = http.send(create(json!({"duration": "0s"}), key)).await;
    assert_eq!(
        (first, again),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED),
        "{a} {b}"
    );
    assert_eq!(a["name"], b["name"], "a repeat returns the same operation");
    // A bare UUID is the same key.
    let (_, _, c) = http
        .send(create(json!({"duration": "0s"}), key.trim_matches('"')))
        .await;
    assert_eq!(a["name"], c["name"]);

    // The same key with another body: the code and the status agree.
    let (status, _, body) = http.send(create(json!({"duration": "5s"}), key)).await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "ALREADY_EXISTS",
        "REQUEST_ID_CONFLICT",
        None,
    );

    let (status, _, body) = http
        .send(create(json!({"duration": "0s"}), "not a uuid"))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        Some("Idempotency-Key"),
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_googles_error_body() {
    let server = TestServer::start().await;
    let http = Http::new(&server, None);
    let (status, _, body) = http
        .send(
            http.request(reqwest::Method::POST, "/v1/diagnostics:sleep")
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        Some("body"),
    );
    let (status, _, body) = http
        .post("/v1/diagnostics:sleep", json!({"duration": "-5s"}))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        Some("duration"),
    );
    let (status, _, body) = http.get("/v1/operations?page_size=many").await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        Some("page_size"),
    );
    let (status, _, body) = http.get("/v1/operations/not-a-uuid").await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        Some("name"),
    );
    let (status, _, body) = http
        .post(
            "/v1/operations/0b6e4a52-8f0d-4d7e-9a51-3c1f2e4d5b6a:explode",
            json!({}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "NO_SUCH_ROUTE",
        None,
    );
    // A path served with another method: 405, and a body that says so.
    let (status, headers, body) = http
        .send(http.request(reqwest::Method::PUT, "/v1/operations"))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "UNIMPLEMENTED",
        "METHOD_NOT_ALLOWED",
        None,
    );
    assert_eq!(headers["allow"], "GET");
    server.stop().await;
}

#[tokio::test]
async fn a_failed_operations_result_says_it_is_the_operations_outcome() {
    let server = TestServer::start().await;
    let http = Http::new(&server, None);
    // The work itself ended NOT_FOUND.
    let failed = http
        .create(
            "/v1/diagnostics:sleep",
            json!({"duration": "0s", "failCode": 5}),
        )
        .await;
    let response = result_of(&http, &failed).await;
    let status = response.status();
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let info = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(
        info["metadata"]["operation"],
        &failed["/v1/".len()..],
        "{body}"
    );
    assert_eq!(info["metadata"]["operation_state"], "FAILED", "{body}");
    // No such operation: the ErrorInfo names no operation outcome.
    let response = result_of(&http, "/v1/operations/0b6e4a52-8f0d-4d7e-9a51-3c1f2e4d5b6a").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["details"][0]["reason"], "NOT_FOUND", "{body}");
    assert!(
        body["error"]["details"][0]["metadata"]
            .get("operation")
            .is_none()
    );
    server.stop().await;
}

#[tokio::test]
async fn the_http_door_is_the_grpc_door() {
    let reader = Person::new("rita", "acme", "reader");
    let writer = Person::new("alice", "acme", "writer");
    let other = Person::new("gary", "globex", "writer");
    let server =
        TestServer::start_with_auth(&auth_toml(&[&reader, &writer, &other], ""), |_| {}).await;

    let (status, _, body) = Http::new(&server, None).get("/v1/operations").await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "CREDENTIALS_MISSING",
        None,
    );
    let (status, _, body) = Http::new(&server, Some("lr_never-issued"))
        .get("/v1/operations")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let (status, _, body) = Http::new(&server, reader.token())
        .post("/v1/diagnostics:sleep", json!({"duration": "0s"}))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        "ROLE_TOO_LOW",
        None,
    );

    let location = Http::new(&server, writer.token())
        .create("/v1/diagnostics:sleep", json!({"duration": "0s"}))
        .await;
    // The reader of the same tenant sees it; another tenant does not.
    let (status, _, _) = Http::new(&server, reader.token()).get(&location).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = Http::new(&server, other.token()).get(&location).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "NOT_FOUND",
        None,
    );
    let (status, _, body) = Http::new(&server, other.token())
        .send(Http::new(&server, other.token()).request(reqwest::Method::DELETE, &location))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    tokio::time::timeout(Duration::from_secs(30), server.stop())
        .await
        .unwrap();
}

/// Events read from a `text/event-stream` response: (id, event, data).
struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

#[derive(Debug)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl EventStream {
    fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped), or None when the stream ends.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_owned());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = Some(v.trim().to_owned());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.trim_start());
                        any = true;
                    }
                }
                if any {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .expect("an event in time")
                .expect("the stream reads")?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

async fn watch(http: &Http, location: &str, last: Option<&str>) -> reqwest::Response {
    let mut request = http
        .request(reqwest::Method::GET, &format!("{location}:watch"))
        .header("accept", "text/event-stream");
    if let Some(last) = last {
        request = request.header("last-event-id", last);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn sse_resumes_with_last_event_id_and_never_misses_the_final_state() {
    let server = TestServer::start().await;
    let http = Http::new(&server, None);
    let location = http
        .create(
            "/v1/diagnostics:sleep",
            json!({"duration": "1s", "steps": 4}),
        )
        .await;

    let response = watch(&http, &location, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut events = EventStream::new(response);
    let first = events.next().await.expect("the current state");
    let first_id = first.id.clone().expect("an id");
    let op: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(op["metadata"]["version"], first_id.as_str(), "{op}");
    // The connection drops; meanwhile the operation finishes.
    drop(events);
    let done = http.wait(&location).await;
    assert_eq!(done["done"], true);

    // Resuming after the first event yields what came since, ending with
    // the final state, and then the stream ends.
    let mut events = EventStream::new(watch(&http, &location, Some(&first_id)).await);
    let mut last = None;
    while let Some(event) = events.next().await {
        let id: i64 = event.id.as_deref().unwrap().parse().unwrap();
        assert!(id > first_id.parse().unwrap(), "{event:?} was seen before");
        last = Some(event);
    }
    let last = last.expect("the final state after resuming");
    let op: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(op["done"], true, "{op}");
    assert_eq!(op["metadata"]["state"], "SUCCEEDED");

    // A client that already has the final state gets nothing more.
    let mut events = EventStream::new(watch(&http, &location, last.id.as_deref()).await);
    assert!(events.next().await.is_none());

    // A watch of nothing is a plain 404.
    let (status, _, body) = http
        .get("/v1/operations/0b6e4a52-8f0d-4d7e-9a51-3c1f2e4d5b6a:watch")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn sse_streams_count_against_the_tenants_watch_limit() {
    let server = TestServer::start_with(|c| c.engine.quotas.max_watches = Some(1)).await;
    let http = Http::new(&server, None);
    let location = http
        .create("/v1/diagnostics:sleep", json!({"duration": "60s"}))
        .await;
    let mut open = EventStream::new(watch(&http, &location, None).await);
    open.next().await.expect("the current state");
    let second = watch(&http, &location, None).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = serde_json::from_slice(&second.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED", "{body}");
    drop(open);
    http.post(&format!("{location}:cancel"), json!({})).await;
    server.stop().await;
}

const ORDERS: &str = "order_id,created_at,customer_id,status,amount_cents\n\
                      a,2024-03-01T10:00:00Z,c1,placed,1250\n\
                      b,2024-03-02T11:00:00Z,c2,delivered,300\n\
                      c,2024-04-01T00:00:00Z,c3,approved,99\n";

/// Polls `:result` until it is no longer 202, honouring Retry-After's
/// presence (the wait itself is the server's `:wait`).
async fn result_of(http: &Http, location: &str) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    loop {
        let mut request = client.get(format!("{}{location}:result", http.base));
        if let Some(token) = &http.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        if response.status() != StatusCode::ACCEPTED {
            return response;
        }
        assert!(retry_after(response.headers()).is_some_and(|s| s >= 1));
        http.wait(location).await;
    }
}

#[tokio::test]
async fn a_report_is_imported_created_polled_and_downloaded_over_http() {
    let server = TestServer::start().await;
    let http = Http::new(&server, None);

    // The CSV body streams into the import, in pieces.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = ORDERS
        .as_bytes()
        .chunks(16)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let (status, headers, op) = http
        .send(
            http.request(reqwest::Method::POST, "/v1/orders:import")
                .header("content-type", "text/csv")
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    pieces,
                ))),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    let import = headers["location"].to_str().unwrap().to_owned();
    let response = result_of(&http, &import).await;
    assert_eq!(response.status(), StatusCode::OK);
    let imported: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(imported["imported"], "3", "{imported}");

    let location = http
        .create("/v1/reports", json!({"month": "2024-03", "format": "CSV"}))
        .await;
    let response = result_of(&http, &location).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let download = response.headers()["location"].to_str().unwrap().to_owned();
    let id = location.rsplit('/').next().unwrap();
    assert_eq!(download, format!("/v1/reports/{id}:download"));

    let (status, _, record) = http.get(&format!("/v1/reports/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["orderCount"], "2", "{record}");
    assert_eq!(record["totalAmountCents"], "1550", "{record}");

    let file = http
        .request(reqwest::Method::GET, &download)
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), StatusCode::OK);
    assert_eq!(file.headers()["content-type"], "text/csv; charset=utf-8");
    let length: u64 = file.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(length.to_string(), record["sizeBytes"].as_str().unwrap());
    let etag = file.headers()["etag"].to_str().unwrap().to_owned();
    let text = file.text().await.unwrap();
    assert_eq!(text.len() as u64, length);
    assert_eq!(etag, format!("\"{}\"", record["sha256"].as_str().unwrap()));
    assert!(text.starts_with("order_id,"), "{text}");
    assert!(text.contains("TOTAL"), "{text}");

    // The same month as PDF downloads as one.
    let location = http
        .create("/v1/reports", json!({"month": "2024-03", "format": "PDF"}))
        .await;
    let response = result_of(&http, &location).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let id = location.rsplit('/').next().unwrap();
    let (_, _, record) = http.get(&format!("/v1/reports/{id}")).await;
    assert_eq!(record["pageCount"], 2, "{record}");
    let file = http
        .request(reqwest::Method::GET, &format!("/v1/reports/{id}:download"))
        .send()
        .await
        .unwrap();
    assert_eq!(file.headers()["content-type"], "application/pdf");
    let disposition = file.headers()["content-disposition"].to_str().unwrap();
    assert!(disposition.ends_with(".pdf\""), "{disposition}");
    let pdf = file.bytes().await.unwrap();
    assert_eq!(pdf.len().to_string(), record["sizeBytes"].as_str().unwrap());
    assert!(pdf.starts_with(b"%PDF-"));

    // A failed operation's :result is its error, with its own status.
    let failed = http
        .create(
            "/v1/diagnostics:sleep",
            json!({"duration": "0s", "failCode": 9}),
        )
        .await;
    let response = result_of(&http, &failed).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["status"], "FAILED_PRECONDITION", "{body}");
    server.stop().await;
}

#[tokio::test]
async fn every_route_answers_for_exactly_the_roles_and_tenants_grpc_allows() {
    let reader = Person::new("rita", "acme", "reader");
    let writer = Person::new("alice", "acme", "writer");
    let admin = Person::new("root", "acme", "admin");
    let other = Person::new("gary", "globex", "writer");
    let auth = auth_toml(&[&reader, &writer, &admin, &other], "");
    let server = TestServer::start_with_auth(&auth, |_| {}).await;
    let as_writer = Http::new(&server, writer.token());
    let op = as_writer
        .create("/v1/diagnostics:sleep", json!({"duration": "0s"}))
        .await;
    as_writer.wait(&op).await;

    // (method, path, needs a writer): the same classes as the gRPC door.
    let routes = [
        ("GET", "/v1/operations".to_owned(), false),
        ("GET", op.clone(), false),
        ("GET", format!("{op}:result"), false),
        ("GET", format!("{op}/deliveries"), false),
        ("POST", format!("{op}:wait"), false),
        ("POST", format!("{op}:cancel"), true),
        ("POST", "/v1/diagnostics:sleep".to_owned(), true),
        ("POST", "/v1/reports".to_owned(), true),
    ];
    let call = |who: Option<&str>, method: &str, path: &str| {
        let http = Http::new(&server, who);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let body = if path.ends_with(":wait") {
            json!({"timeout": "1s"})
        } else if path.ends_with("/reports") {
            json!({"month": "2024-03", "format": "CSV"})
        } else if path.ends_with(":cancel") {
            json!({})
        } else {
            json!({"duration": "0s"})
        };
        let request = http.request(method, path);
        async move {
            let response = json_body(request, &body).send().await.unwrap();
            response.status()
        }
    };
    for (method, path, writes) in &routes {
        let scoped = path.starts_with("/v1/operations/");
        assert_eq!(
            call(None, method, path).await,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        assert_eq!(
            call(Some("lr_never-issued"), method, path).await,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with an unknown token"
        );
        let as_reader = call(reader.token(), method, path).await;
        if *writes {
            assert_eq!(
                as_reader,
                StatusCode::FORBIDDEN,
                "{method} {path} as a reader"
            );
        } else {
            assert!(
                as_reader.is_success() || as_reader.is_redirection(),
                "{method} {path} as a reader: {as_reader}"
            );
        }
        // Cancelling a finished operation is refused for what it is, not
        // for who asks: FAILED_PRECONDITION, 400.
        let allowed = |status: StatusCode| {
            status.is_success()
                || status.is_redirection()
                || (path.ends_with(":cancel") && status == StatusCode::BAD_REQUEST)
        };
        let as_writer = call(writer.token(), method, path).await;
        assert!(
            allowed(as_writer),
            "{method} {path} as a writer: {as_writer}"
        );
        let as_admin = call(admin.token(), method, path).await;
        assert!(allowed(as_admin), "{method} {path} as an admin: {as_admin}");
        if scoped {
            assert_eq!(
                call(other.token(), method, path).await,
                StatusCode::NOT_FOUND,
                "{method} {path} from another tenant"
            );
        }
    }
    // DELETE last: another tenant cannot, the owner's writer can.
    let delete = |who: Option<&str>| {
        let http = Http::new(&server, who);
        let op = op.clone();
        async move {
            http.request(reqwest::Method::DELETE, &op)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(delete(None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(delete(reader.token()).await, StatusCode::FORBIDDEN);
    assert_eq!(delete(other.token()).await, StatusCode::NOT_FOUND);
    assert_eq!(delete(writer.token()).await, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(30), server.stop())
        .await
        .unwrap();
}

/// The metrics page once `ready` says it shows what a test waits for.
async fn metrics_when(server: &TestServer, ready: impl Fn(&str) -> bool) -> String {
    let url = format!("http://{}/metrics", server.metrics_addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if ready(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the metrics did not show the work in time:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the sample `name{labels}` in a Prometheus text page.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_known_work() {
    let server = TestServer::start().await;
    let http = Http::new(&server, None);
    const N: usize = 7;
    for _ in 0..N {
        http.create("/v1/diagnostics:sleep", json!({"duration": "0s"}))
            .await;
    }
    // One more over gRPC, and one refused there.
    crate::common::start_sleep(&server, longrun::pb::longrun::v1::SleepRequest::default()).await;
    let mut ops = longrun::pb::google::longrunning::operations_client::OperationsClient::new(
        server.channel().await,
    );
    let missing = ops
        .get_operation(longrun::pb::google::longrunning::GetOperationRequest {
            name: "operations/0b6e4a52-8f0d-4d7e-9a51-3c1f2e4d5b6a".into(),
        })
        .await;
    assert!(missing.is_err());
    // Wait for every create to finish (they are zero-length sleeps).
    let (_, _, listed) = http.get("/v1/operations?page_size=100").await;
    for op in listed["operations"].as_array().unwrap() {
        let name = op["name"].as_str().unwrap();
        http.wait(&format!("/v1/{name}")).await;
    }

    let page = reqwest::get(format!("http://{}/metrics", server.metrics_addr))
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let sleep = "kind=\"longrun.v1.Diagnostics.Sleep\"";
    // An attempt's end is counted once its result is stored, which a
    // waiter may hear of first: wait for the count, with a deadline.
    let finished = format!("longrun_operations_finished_total{{{sleep},outcome=\"succeeded\"}}");
    let text = metrics_when(&server, |text| {
        sample(text, &finished) == Some((N + 1) as f64)
    })
    .await;
    assert_eq!(
        sample(
            &text,
            &format!("longrun_operations_created_total{{{sleep}}}")
        ),
        Some((N + 1) as f64),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("longrun_operations_started_total{{{sleep}}}")
        ),
        Some((N + 1) as f64),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("longrun_operations_finished_total{{{sleep},outcome=\"succeeded\"}}")
        ),
        Some((N + 1) as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("longrun_run_seconds_count{{{sleep}}}")),
        Some((N + 1) as f64),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "longrun_http_requests_total{method=\"POST\",route=\"/v1/diagnostics:sleep\",code=\"202\"}"
        ),
        Some(N as f64),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "longrun_grpc_requests_total{method=\"/google.longrunning.Operations/GetOperation\",code=\"NOT_FOUND\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "longrun_store_commit_batch_size_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "longrun_watch_streams"), Some(0.0), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    // Queue gauges follow the store: one long sleep waits or runs.
    let long = http
        .create("/v1/diagnostics:sleep", json!({"duration": "60s"}))
        .await;
    let text = metrics_when(&server, |_| true).await;
    let queued = sample(
        &text,
        &format!("longrun_queue_depth{{{sleep},state=\"QUEUED\"}}"),
    );
    let running = sample(
        &text,
        &format!("longrun_queue_depth{{{sleep},state=\"RUNNING\"}}"),
    );
    assert_eq!(
        queued.unwrap_or(0.0) + running.unwrap_or(0.0),
        1.0,
        "{text}"
    );
    http.post(&format!("{long}:cancel"), json!({})).await;

    // A paused queue says so, and its waiting work shows its age.
    http.post("/v1/queues/sleep:pause", json!({})).await;
    http.create("/v1/diagnostics:sleep", json!({"duration": "0s"}))
        .await;
    let text = metrics_when(&server, |text| {
        text.contains("longrun_queue_oldest_age_seconds{kind=\"longrun.v1.Diagnostics.Sleep\"}")
    })
    .await;
    assert_eq!(
        sample(&text, &format!("longrun_queue_paused{{{sleep}}}")),
        Some(1.0),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn cors_is_off_unless_an_origin_is_allowed() {
    let preflight = |server: &TestServer, origin: &str| {
        let http = Http::new(server, None);
        let origin = origin.to_owned();
        async move {
            http.request(reqwest::Method::OPTIONS, "/v1/operations")
                .header("origin", origin)
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", "authorization")
                .send()
                .await
                .unwrap()
        }
    };
    let closed = TestServer::start().await;
    let response = preflight(&closed, "https://app.example.com").await;
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    closed.stop().await;

    let open = TestServer::start_with(|c| {
        c.cors_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let response = preflight(&open, "https://app.example.com").await;
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let response = preflight(&open, "https://evil.example.com").await;
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    open.stop().await;
}

/// A request that should get the documented success answer of one
/// OpenAPI operation, given an operation id and a report id that exist.
fn recipe(
    operation_id: &str,
    op: &str,
    running: &str,
    cancelled: &str,
    report: &str,
) -> (String, Option<Value>) {
    let none = None;
    match operation_id {
        "Operations.ListOperations" => ("/v1/operations".into(), none),
        "Operations.GetOperation" => (format!("/v1/{op}"), none),
        "Operations.GetOperationResult" => (format!("/v1/{op}:result"), none),
        "Operations.WaitOperation" => (format!("/v1/{op}:wait"), Some(json!({"timeout": "1s"}))),
        "Operations.CancelOperation" => (format!("/v1/{running}:cancel"), Some(json!({}))),
        "Operations.DeleteOperation" => (format!("/v1/{op}"), none),
        "OperationWatcher.WatchOperation" => (format!("/v1/{op}:watch"), none),
        "Notifications.ListDeliveries" => (format!("/v1/{op}/deliveries"), none),
        "Diagnostics.Sleep" => (
            "/v1/diagnostics:sleep".into(),
            Some(json!({"duration": "0s"})),
        ),
        "ReportService.CreateReport" => (
            "/v1/reports".into(),
            Some(json!({"month": "2024-03", "format": "JSON"})),
        ),
        "ReportService.GetReport" => (format!("/v1/{report}"), none),
        "ReportService.ReadReport" => (format!("/v1/{report}:download"), none),
        "ReportService.ImportOrders" => (
            "/v1/orders:import".into(),
            Some(Value::String(ORDERS.into())),
        ),
        "OperationWatcher.WatchChanges" => ("/v1/operations:watch".into(), none),
        "Console.GetCaller" => ("/v1/caller".into(), none),
        "Console.GetQueueStats" => ("/v1/queues".into(), none),
        "Queues.PauseQueue" => ("/v1/queues/echo:pause".into(), Some(json!({}))),
        "Queues.ResumeQueue" => ("/v1/queues/echo:resume".into(), Some(json!({}))),
        "Queues.SetLimit" => (
            "/v1/queues/echo:setLimit".into(),
            Some(json!({"scope": "key", "concurrency": 2, "rates": ["10/s", "500/h"]})),
        ),
        "Queues.DeleteLimit" => (
            "/v1/queues/echo:deleteLimit".into(),
            Some(json!({"scope": "key"})),
        ),
        "Queues.ListLimits" => ("/v1/limits".into(), none),
        "Jobs.Enqueue" => (
            "/v1/jobs:enqueue".into(),
            Some(json!({
                "kind": "echo",
                "payload": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "hi"},
            })),
        ),
        "Schedules.ListSchedules" => ("/v1/schedules".into(), none),
        "Schedules.CreateSchedule" => (
            "/v1/schedules?scheduleId=x".into(),
            Some(json!({
                "kind": "sleep",
                "payload": {"@type": "type.googleapis.com/longrun.v1.SleepRequest"},
                "cron": "0 3 * * *",
                "timeZone": "Europe/Berlin",
            })),
        ),
        "Schedules.GetSchedule" => ("/v1/schedules/x".into(), none),
        "Schedules.UpdateSchedule" => (
            "/v1/schedules/x?updateMask=cron".into(),
            Some(json!({"cron": "0 4 * * *"})),
        ),
        "Schedules.DeleteSchedule" => ("/v1/schedules/x".into(), none),
        "Schedules.PauseSchedule" => ("/v1/schedules/x:pause".into(), Some(json!({}))),
        "Schedules.ResumeSchedule" => ("/v1/schedules/x:resume".into(), Some(json!({}))),
        "Schedules.RunNow" => ("/v1/schedules/x:runNow".into(), Some(json!({}))),
        "Schedules.ListRuns" => ("/v1/schedules/x/runs".into(), none),
        "Schedules.Backfill" => (
            "/v1/schedules/x:backfill".into(),
            Some(json!({"startTime": "2026-01-01T00:00:00Z", "endTime": "2026-01-03T00:00:00Z"})),
        ),
        "Batches.CreateBatch" => (
            "/v1/batches".into(),
            Some(json!({"children": [{
                "kind": "longrun.v1.Diagnostics.Sleep",
                "payload": {"@type": "type.googleapis.com/longrun.v1.SleepRequest", "duration": "0s"},
            }]})),
        ),
        "Bulk.CancelMatching" => (
            "/v1/operations:cancelMatching".into(),
            Some(json!({"filter": "kind = \"echo\""})),
        ),
        "Bulk.DeleteMatching" => (
            "/v1/operations:deleteMatching".into(),
            Some(json!({"filter": "kind = \"echo\" AND done = true"})),
        ),
        "Bulk.RetryMatching" => (
            "/v1/operations:retryMatching".into(),
            Some(json!({"filter": "kind = \"echo\""})),
        ),
        "Bulk.RetryOperation" => (format!("/v1/{cancelled}:retry"), Some(json!({}))),
        other => panic!("no request for the documented operation {other}; add one"),
    }
}

#[tokio::test]
async fn every_route_the_openapi_document_lists_answers_as_documented() {
    let server = TestServer::start().await;
    server
        .engine
        .declare_kind(
            longrun::engine::Owner::Everyone,
            longrun::engine::KindSpec::new("echo"),
        )
        .await
        .unwrap();
    let http = Http::new(&server, None);
    let (status, headers, doc) = http.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(doc["openapi"], "3.1.0");

    // Something of each kind to point at.
    let op = http
        .create("/v1/diagnostics:sleep", json!({"duration": "0s"}))
        .await["/v1/".len()..]
        .to_owned();
    http.wait(&format!("/v1/{op}")).await;
    let running = http
        .create("/v1/diagnostics:sleep", json!({"duration": "60s"}))
        .await["/v1/".len()..]
        .to_owned();
    let report_op = http
        .create("/v1/reports", json!({"month": "2024-03", "format": "CSV"}))
        .await;
    http.wait(&report_op).await;
    let report = format!("reports/{}", report_op.rsplit('/').next().unwrap());
    // One to retry.
    let cancelled = http
        .create("/v1/diagnostics:sleep", json!({"duration": "60s"}))
        .await["/v1/".len()..]
        .to_owned();
    http.post(&format!("/v1/{cancelled}:cancel"), json!({}))
        .await;
    http.wait(&format!("/v1/{cancelled}")).await;

    let client = reqwest::Client::builder()
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut checked = 0;
    // DELETE goes last: it removes the operation the others use.
    let mut calls = Vec::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            calls.push((path.clone(), method.clone(), operation.clone()));
        }
    }
    calls.sort_by_key(|(_, method, _)| method == "delete");
    for (path, method, operation) in calls {
        let id = operation["operationId"].as_str().unwrap();
        let (url, body) = recipe(id, &op, &running, &cancelled, &report);
        let template = path.replace("{id}", "x");
        let concrete = url
            .split('?')
            .next()
            .unwrap()
            .replace(&op["operations/".len()..], "x")
            .replace(&running["operations/".len()..], "x")
            .replace(&cancelled["operations/".len()..], "x")
            .replace(&report["reports/".len()..], "x")
            .replace("queues/echo:", "queues/x:");
        assert_eq!(concrete, template, "{id}'s request does not fit its path");
        let mut request = client.request(
            reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
            format!("{}{url}", http.base),
        );
        request = match body {
            Some(Value::String(csv)) => request.header("content-type", "text/csv").body(csv),
            Some(json) => json_body(request, &json),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16().to_string();
        let documented = &operation["responses"][&status];
        assert!(
            documented.is_object() && status != "default",
            "{method} {path} ({id}) answered {status}, which it does not document"
        );
        assert!(
            response.status().is_success() || response.status().is_redirection(),
            "{method} {path} ({id}) failed with {status}"
        );
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
        match documented.get("content") {
            Some(content) => {
                let content_type = content_type.unwrap_or_default();
                assert!(
                    content.get(&content_type).is_some(),
                    "{method} {path} answered {content_type}, not documented"
                );
            }
            None => assert!(status == "303", "{method} {path}"),
        }
        for name in documented["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            if name == "Retry-After" {
                continue; // only while not done
            }
            assert!(
                response
                    .headers()
                    .contains_key(name.to_lowercase().as_str()),
                "{method} {path} documents {name} but did not send it"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 37, "{doc}");
    http.post(&format!("/v1/{running}:cancel"), json!({})).await;
    server.stop().await;
}

#[tokio::test]
async fn the_activity_stream_and_the_queues_show_only_the_callers_tenant() {
    activity_and_queues(None).await;
}

#[tokio::test]
async fn on_postgresql_the_activity_stream_and_the_queues_show_only_the_callers_tenant() {
    let Some(db) = crate::pg::TestDb::create().await else {
        return;
    };
    activity_and_queues(Some(&db.url)).await;
}

async fn activity_and_queues(postgres: Option<&str>) {
    let acme = Person::new("alice", "acme", "writer");
    let globex = Person::new("gary", "globex", "writer");
    let server = TestServer::start_with_auth(&auth_toml(&[&acme, &globex], ""), |c| {
        if let Some(url) = postgres {
            c.backend = longrun::store::Backend::Postgres(url.to_owned());
        }
    })
    .await;
    let ours = Http::new(&server, acme.token());
    let theirs = Http::new(&server, globex.token());

    let (status, _, caller) = ours.get("/v1/caller").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(caller["name"], "alice");
    assert_eq!(caller["tenant"], "acme");
    assert_eq!(caller["role"], "writer");
    assert_eq!(caller["allTenants"], Value::Null, "false is left out");

    let mut events = EventStream::new(
        ours.request(reqwest::Method::GET, "/v1/operations:watch")
            .send()
            .await
            .unwrap(),
    );
    // globex's operation comes first; acme's stream must skip it.
    theirs
        .post("/v1/diagnostics:sleep", json!({"duration": "60s"}))
        .await;
    let mine = ours
        .create("/v1/diagnostics:sleep", json!({"duration": "60s"}))
        .await["/v1/".len()..]
        .to_owned();
    let first = events.next().await.expect("a change");
    let op: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(op["name"], mine.as_str(), "{op}");
    assert_eq!(op["metadata"]["tenant"], "acme");

    let (status, _, queues) = ours.get("/v1/queues").await;
    assert_eq!(status, StatusCode::OK, "{queues}");
    let sleep = queues["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "longrun.v1.Diagnostics.Sleep")
        .expect("the Sleep queue")
        .clone();
    let unfinished: i64 = ["queued", "running", "cancelling"]
        .iter()
        .map(|f| sleep[*f].as_str().map_or(0, |n| n.parse::<i64>().unwrap()))
        .sum();
    assert_eq!(unfinished, 1, "only acme's operation counts: {sleep}");
    // The scrape counts the queue of every tenant.
    let metrics = reqwest::get(format!("http://{}/metrics", server.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let depth: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("longrun_queue_depth{") && l.contains("Diagnostics.Sleep"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(depth, 2.0, "{metrics}");
    drop(events);
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_response_type_is_written_in_base64_never_as_null() {
    use longrun::engine::{KindSpec, LeaseRef, Owner, ToWorker, WorkerCaller, WorkerSpec};
    let server = TestServer::start().await;
    server
        .engine
        .declare_kind(Owner::Everyone, KindSpec::new("echo"))
        .await
        .unwrap();
    let http = Http::new(&server, None);
    let plain = http
        .create("/v1/diagnostics:sleep", json!({"duration": "0s"}))
        .await;
    http.wait(&plain).await;
    let odd = http
        .create(
            "/v1/jobs:enqueue",
            json!({"kind": "echo", "payload": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "x"}}),
        )
        .await;
    // A worker answers with a message of a type this server does not know.
    let mut session = server
        .engine
        .connect_worker(WorkerSpec {
            name: "w".into(),
            principal: "w".into(),
            kinds: vec!["echo".into()],
            capacity: 1,
            tenant: None,
        })
        .unwrap();
    let Some(ToWorker::Assign(a)) = session.next().await else {
        panic!("an assignment");
    };
    let anyone = |_: &str| true;
    server
        .engine
        .finish_outside(
            &WorkerCaller {
                scope: longrun::model::Scope::All,
                may_serve: &anyone,
            },
            &LeaseRef {
                id: a.id,
                attempt: a.attempt,
                token: a.lease_token,
            },
            Ok(longrun::model::Payload {
                type_url: "type.googleapis.com/acme.v1.Secret".into(),
                value: vec![1, 2, 3].into(),
            }),
        )
        .await
        .unwrap();
    let unknown = json!({"@type": "type.googleapis.com/acme.v1.Secret", "value": "AQID"});

    let (status, headers, op) = http.get(&odd).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(op["response"], unknown, "{op}");
    // The page shows it, and the operation beside it, whole.
    let (_, _, page) = http.get("/v1/operations").await;
    let ops = page["operations"].as_array().expect("a page, not null");
    assert_eq!(ops.len(), 2, "{page}");
    assert!(
        ops.iter()
            .all(|o| o["name"].is_string() && o["done"] == true),
        "{page}"
    );
    assert!(ops.iter().any(|o| o["response"] == unknown), "{page}");
    // So does the event stream.
    let mut events = EventStream::new(watch(&http, &odd, None).await);
    let event = events.next().await.unwrap();
    let data: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(data["response"], unknown, "{data}");
    drop((events, session));
    server.stop().await;
}

#[tokio::test]
async fn json_routes_read_json_and_imports_read_csv_only() {
    let server = TestServer::start().await;
    let http = Http::new(&server, None);
    let body = json!({"duration": "0s"}).to_string();
    // A form or a text/plain POST (what another site's page can send
    // without asking) is refused before anything is created.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = http
            .request(reqwest::Method::POST, "/v1/diagnostics:sleep")
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let (status, _, error) = http.send(request).await;
        assert_error(
            status,
            &error,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            Some("Content-Type"),
        );
    }
    let (_, _, page) = http.get("/v1/operations").await;
    assert!(
        page["operations"].as_array().is_none_or(|o| o.is_empty()),
        "{page}"
    );
    // JSON is taken, with a charset too.
    let request = http
        .request(reqwest::Method::POST, "/v1/diagnostics:sleep")
        .header("content-type", "application/json; charset=utf-8")
        .body(body);
    let (status, headers, _) = http.send(request).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // A POST with no body at all needs no type.
    let location = headers["location"].to_str().unwrap().to_owned();
    let (status, _, _) = http
        .send(http.request(reqwest::Method::POST, &format!("{location}:cancel")))
        .await;
    assert!(
        status.is_success() || status == StatusCode::BAD_REQUEST,
        "{status}"
    );
    // An import reads CSV only.
    let request = http
        .request(reqwest::Method::POST, "/v1/orders:import")
        .header("content-type", "application/json")
        .body("order_id,created_at,customer_id,status,amount_cents\n");
    let (status, _, _) = http.send(request).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    server.stop().await;
}

#[tokio::test]
async fn an_open_server_answers_only_to_its_own_names() {
    let server =
        TestServer::start_with(|c| c.allowed_hosts = vec!["longrun.internal".into()]).await;
    let http = Http::new(&server, None);
    let port = server.addr.port();
    let with_host = |host: String| {
        http.request(reqwest::Method::GET, "/v1/operations")
            .header("host", host)
    };
    // A page that rebound its own name to this address reads nothing.
    let (status, headers, error) = http.send(with_host("evil.example.com".into())).await;
    assert_error(
        status,
        &error,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        "HOST_NOT_ALLOWED",
        None,
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("longrun.internal:{port}"),
        "longrun.internal".into(),
    ] {
        let (status, _, body) = http.send(with_host(host.clone())).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }
    server.stop().await;

    // With authentication, names are the operator's business.
    let writer = Person::new("wanda", "acme", "writer");
    let server = TestServer::start_with_auth(&auth_toml(&[&writer], ""), |_| {}).await;
    let http = Http::new(&server, writer.token());
    let request = http
        .request(reqwest::Method::GET, "/v1/operations")
        .header("host", "longrun.example.com");
    let (status, _, _) = http.send(request).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn pages_of_other_origins_may_not_change_anything() {
    let server =
        TestServer::start_with(|c| c.cors_origins = vec!["https://app.example.com".into()]).await;
    let http = Http::new(&server, None);
    let post = |origin: &str| {
        json_body(
            http.request(reqwest::Method::POST, "/v1/diagnostics:sleep")
                .header("origin", origin),
            &json!({"duration": "0s"}),
        )
    };
    for origin in ["https://evil.example.com", "null"] {
        let (status, _, error) = http.send(post(origin)).await;
        assert_error(
            status,
            &error,
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "CROSS_ORIGIN_REFUSED",
            None,
        );
    }
    let own = format!("http://{}", server.addr);
    for origin in [own.as_str(), "https://app.example.com"] {
        let (status, _, _) = http.send(post(origin)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{origin}");
    }
    // Reads are left to CORS: the browser hides the answer from the page.
    let request = http
        .request(reqwest::Method::GET, "/v1/operations")
        .header("origin", "https://evil.example.com");
    let (status, _, _) = http.send(request).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn any_origin_may_be_allowed_and_a_malformed_one_is_refused_at_start() {
    let server = TestServer::start_with(|c| c.cors_origins = vec!["*".into()]).await;
    let http = Http::new(&server, None);
    let response = http
        .request(reqwest::Method::OPTIONS, "/v1/operations")
        .header("origin", "https://anywhere.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let (status, _, _) = http
        .send(json_body(
            http.request(reqwest::Method::POST, "/v1/diagnostics:sleep")
                .header("origin", "https://anywhere.example.com"),
            &json!({"duration": "0s"}),
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::common::config(dir.path());
    config.cors_origins = vec!["app.example.com".into()];
    let server = longrun::Server::open(config, longrun::Registry::new())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = server
        .serve(listener, std::future::pending())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("is not an origin"), "{error}");
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|c| c.request_body_timeout = Duration::from_secs(1)).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/diagnostics:sleep HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"dura",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(crate::common::PATIENCE, async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an answer once the body is overdue");
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    server.stop().await;
}

#[tokio::test]
async fn a_watch_filter_is_bounded_like_a_list_filter() {
    let server = TestServer::start().await;
    let http = Http::new(&server, None);
    let long = format!("kind = \"{}\"", "k".repeat(2000));
    let (status, _, error) = http
        .get(&format!("/v1/operations:watch?filter={}", urlencode(&long)))
        .await;
    assert_error(
        status,
        &error,
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        Some("filter"),
    );
    server.stop().await;
}

/// `text` percent-encoded for a query string.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_filtered_change_stream_hears_an_operation_leave_and_resumes_by_cursor() {
    let server = TestServer::start().await;
    let http = Http::new(&server, None);
    let open = |last: Option<String>| {
        let mut request = http
            .request(
                reqwest::Method::GET,
                "/v1/operations:watch?filter=done%20%3D%20false",
            )
            .header("accept", "text/event-stream");
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        async move { EventStream::new(request.send().await.unwrap()) }
    };
    let mut events = open(None).await;
    let location = http
        .create(
            "/v1/diagnostics:sleep",
            json!({"duration": "0.2s", "steps": 1}),
        )
        .await;
    let name = &location["/v1/".len()..];
    // Its changes while not done, then the one that makes it leave the
    // filter (named `left`), with the final state.
    let mut seen = Vec::new();
    loop {
        let event = events.next().await.expect("an event");
        let op: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(op["name"], name, "{op}");
        let left = event.event.as_deref() == Some("left");
        seen.push(event);
        if left {
            assert_eq!(op["done"], true, "{op}");
            break;
        }
        assert!(event_is_plain(seen.last().unwrap()), "{:?}", seen.last());
    }
    // The ids order the stream.
    let seqs: Vec<u64> = seen
        .iter()
        .map(|e| {
            e.id.as_ref()
                .unwrap()
                .rsplit('-')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    drop(events);

    // Reconnecting after the first event replays the rest, in order.
    let mut again = open(seen[0].id.clone()).await;
    for expected in &seen[1..] {
        let event = again.next().await.expect("a replayed event");
        assert_eq!(event.id, expected.id);
        assert_eq!(event.event, expected.event);
    }
    drop(again);
    // A cursor this server never gave says to start over.
    let mut lost = open(Some("0123456789abcdef-7".into())).await;
    let event = lost.next().await.expect("an event");
    assert_eq!(event.event.as_deref(), Some("resync"), "{event:?}");
    server.stop().await;
}

fn event_is_plain(event: &SseEvent) -> bool {
    event.event.is_none()
}

#[tokio::test]
async fn unknown_paths_are_not_found_and_the_probes_tell_the_truth() {
    let writer = Person::new("wanda", "acme", "writer");
    let dir = tempfile::tempdir().unwrap();
    let mut stores = longrun::store::Stores::from_backend(
        longrun::store::SledStore::open(dir.path(), longrun::store::SyncMode::Always).unwrap(),
    );
    let spy = crate::spy::Spy::wrap(&mut stores);
    let mut config = crate::common::config(dir.path());
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, auth_toml(&[&writer], "")).unwrap();
    config.auth_file = Some(auth);
    let server = TestServer::start_stores(config, stores, longrun::Registry::new()).await;
    let http = Http::new(&server, None);
    // No token needed, and the answers are what a load balancer reads.
    for path in ["/healthz", "/readyz"] {
        let (status, _, body) = http.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["status"], "SERVING");
    }
    for (method, path) in [
        (reqwest::Method::GET, "/favicon.ico"),
        (reqwest::Method::GET, "/index.html"),
        (
            reqwest::Method::POST,
            "/google.longrunning.Operations/GetOperation",
        ),
    ] {
        let (status, headers, error) = http.send(http.request(method, path)).await;
        assert_error(
            status,
            &error,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "NO_SUCH_ROUTE",
            None,
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    // A gRPC client of a method nobody serves still hears UNIMPLEMENTED
    // (once it passed the door).
    let mut grpc = tonic::client::Grpc::new(server.authed(writer.token()).await);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<_, (), _>(
            tonic::Request::new(()),
            "/acme.Nothing/Here".parse().unwrap(),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    // While the store cannot take writes the node is not ready (but up);
    // /readyz turns before the gRPC health service does.
    use tokio_stream::StreamExt;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    async fn serving(
        health: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
        wanted: bool,
    ) {
        let wanted = if wanted { 1 } else { 2 };
        tokio::time::timeout(crate::common::PATIENCE, async {
            while let Some(item) = health.next().await {
                if item.unwrap().status == wanted {
                    return;
                }
            }
        })
        .await
        .expect("health turned in time");
    }
    spy.fail(crate::spy::Fault::BeforeApplying);
    let refused = DiagnosticsClient::new(server.authed(writer.token()).await)
        .sleep(longrun::pb::longrun::v1::SleepRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    serving(&mut health, false).await;
    let (status, _, body) = http.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "NOT_SERVING");
    let (status, _, _) = http.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    spy.fail(crate::spy::Fault::None);
    serving(&mut health, true).await;
    let (status, _, _) = http.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    drop(health);
    server.stop().await;
}
