//! The HTTP/JSON face, through the real server with a real HTTP client
//! (reqwest over HTTP/1.1 on the gRPC listener): status codes, headers,
//! bodies, errors, idempotency and the door.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Person, TestServer, auth_toml};

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
    let (_, headers, _) = http
        .post("/v1/diagnostics:sleep", json!({"duration": "60s"}))
        .await;
    let location = headers["location"].to_str().unwrap().to_owned();
    let (status, _, body) = http.post(&format!("{location}:cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, _, done) = http
        .post(&format!("{location}:wait"), json!({"timeout": "30s"}))
        .await;
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

    let (status, _, body) = http.send(create(json!({"duration": "5s"}), key)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["status"], "ALREADY_EXISTS", "{body}");

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
    server.stop().await;
}

#[tokio::test]
async fn the_http_door_is_the_grpc_door() {
    let reader = Person::new("rita", "acme", "reader");
    let writer = Person::new("alice", "acme", "writer");
    let other = Person::new("gary", "globex", "writer");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, auth_toml(&[&reader, &writer, &other], "")).unwrap();
    let server = TestServer::start_with(|c| c.auth_file = Some(path)).await;

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

    let (status, headers, _) = Http::new(&server, writer.token())
        .post("/v1/diagnostics:sleep", json!({"duration": "0s"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let location = headers["location"].to_str().unwrap().to_owned();
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
