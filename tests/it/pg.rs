//! Throwaway PostgreSQL databases for the tests that need one.
//!
//! The server is `LONGRUN_TEST_POSTGRES` (a URL of any database on it), or
//! the local one, `postgres://postgres@127.0.0.1:5432/postgres`. Each test
//! gets a database of its own, dropped when the test ends. Where no server
//! answers, a test says loudly that it was skipped, unless
//! `LONGRUN_TEST_POSTGRES_REQUIRED=1` (set by `.ci/run`) makes that a
//! failure.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The server's URL, naming its maintenance database.
fn server() -> String {
    std::env::var("LONGRUN_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database replaced by `name` (and no query).
fn with_database(url: &str, name: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    match base[scheme_end..].find('/') {
        Some(slash) => format!("{}/{name}", &base[..scheme_end + slash]),
        None => format!("{base}/{name}"),
    }
}

/// A database that exists for one test.
pub struct TestDb {
    /// Where the database is.
    pub url: String,
    name: String,
}

impl TestDb {
    /// Creates a fresh database, or says why not and returns None (a
    /// failure when PostgreSQL is required).
    pub async fn create() -> Option<Self> {
        let server = server();
        let mut admin = match PgConnection::connect(&server).await {
            Ok(admin) => admin,
            Err(e) => {
                assert!(
                    std::env::var("LONGRUN_TEST_POSTGRES_REQUIRED").as_deref() != Ok("1"),
                    "no PostgreSQL at {server}, and LONGRUN_TEST_POSTGRES_REQUIRED=1: {e}"
                );
                eprintln!(
                    "\n*** SKIPPED: no PostgreSQL at {server} ({e}); set LONGRUN_TEST_POSTGRES\n"
                );
                return None;
            }
        };
        let name = format!("longrun_test_{:016x}", rand::random::<u64>());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        let _ = admin.close().await;
        Some(Self {
            url: with_database(&server, &name),
            name,
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Dropped from a thread of its own: the test's runtime may be
        // shutting down.
        let (server, name) = (server(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&server).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}
