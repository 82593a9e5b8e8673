//! Every benchmark scenario runs briefly, so none of them rots. These check
//! that each scenario completes and reports; they time nothing.

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_longrun"))
        .arg("bench")
        .args(args)
        .args(["--output", "json"])
        .output()
        .expect("run longrun bench");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON")
}

#[test]
fn every_grpc_scenario_runs() {
    let v = bench(&[
        "run",
        "--scenarios",
        "ceiling,create,e2e,dispatch,get,fanout,scale",
        "--duration",
        "300ms",
        "--concurrency",
        "4",
        "--connections",
        "2",
        "--watchers",
        "50",
        "--scale-count",
        "300",
    ]);
    assert!(v["ceiling"]["calls"].as_u64().unwrap() > 0, "{v}");
    assert!(v["create"]["stats"]["calls"].as_u64().unwrap() > 0, "{v}");
    assert!(v["e2e"]["stats"]["calls"].as_u64().unwrap() > 0, "{v}");
    for load in ["low", "paced", "high"] {
        assert!(
            v["dispatch"][load]["ops_per_second"].as_f64().unwrap() > 0.0,
            "{v}"
        );
    }
    for gets in ["paced", "flat"] {
        assert!(v["get"][gets]["get"]["calls"].as_u64().unwrap() > 0, "{v}");
    }
    assert_eq!(v["fanout"]["received_final"], 50, "{v}");
    assert!(v["scale"]["get"]["calls"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn the_churn_and_reports_scenarios_run() {
    let v = bench(&[
        "churn",
        "--count",
        "300",
        "--retention",
        "1s",
        "--sample-every",
        "200ms",
        "--tail",
        "0s",
        "--concurrency",
        "4",
    ]);
    assert_eq!(v["failed"], 0, "{v}");
    let v = bench(&["reports", "--count", "3000", "--months", "2"]);
    assert_eq!(v["imported"], 3000, "{v}");
    let reports = v["reports"].as_array().unwrap();
    let formats: Vec<&str> = reports
        .iter()
        .map(|r| r["format"].as_str().unwrap())
        .collect();
    assert_eq!(formats, ["CSV", "JSON", "PDF"], "{v}");
    for r in reports {
        assert!(r["rows"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(r["rows"], reports[0]["rows"], "{v}");
    }
    assert!(reports[2]["pages"].as_u64().unwrap() > 1, "{v}");
}

#[test]
fn the_scenarios_run_against_a_server_that_wants_a_token() {
    let v = bench(&[
        "run",
        "--scenarios",
        "create,get",
        "--auth",
        "--duration",
        "300ms",
        "--concurrency",
        "4",
        "--connections",
        "2",
    ]);
    // A refused token would show as errors and no calls.
    assert!(v["create"]["stats"]["calls"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["create"]["stats"]["errors"].as_u64(), Some(0), "{v}");
    assert_eq!(v["get"]["flat"]["get"]["errors"].as_u64(), Some(0), "{v}");
}
