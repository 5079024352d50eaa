//! `cachecast-bench` end to end, through the built binary, on loopback
//! (interface 127.0.0.1, TTL 0): small runs that check what the bench
//! reports, not how fast anything is (speed targets live in
//! `scripts/bench.sh`, never in tests).

use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cachecast-bench");

fn bench(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--quiet", "--max-time", "20s"])
        .args(args)
        .output()
        .expect("run cachecast-bench")
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = bench(&all);
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bench --json prints JSON")
}

fn run<'a>(v: &'a Value, section: &str, system: &str) -> &'a Value {
    v[section]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["system"] == system))
        .unwrap_or_else(|| panic!("no {section} run of {system}: {v}"))
}

#[test]
fn flat_out_every_subscriber_gets_every_event_of_cachecast() {
    let v = json(&[
        "--mode",
        "throughput",
        "--events",
        "50000",
        "--subscribers",
        "2",
        "--systems",
        "cachecast,udp-gso",
    ]);
    assert_eq!(v["events_per_datagram"], 33, "32-byte keys: {v}");
    let c = run(&v, "throughput", "cachecast");
    assert_eq!(c["publisher"]["published"], 50_000);
    let subs = c["subscribers"].as_array().unwrap();
    assert_eq!(subs.len(), 2);
    for s in subs {
        assert_eq!(s["error"], Value::Null, "{s}");
        assert_eq!(s["resets"], 0, "{s}");
        assert_eq!(s["received"], 50_000, "{s}");
        assert!(s["p50_ns"].as_u64().unwrap() > 0, "{s}");
    }
    assert!(c["delivered_per_s"].as_f64().unwrap() > 0.0);
    assert!(c["pub_cpu_s_per_m"].as_f64().unwrap() > 0.0);
    let raw = run(&v, "throughput", "udp-gso");
    assert!(
        raw["subscribers"][0]["received"].as_u64().unwrap() > 0,
        "{raw}"
    );
}

#[test]
fn paced_latency_and_a_sweep_and_memory() {
    let v = json(&[
        "--mode",
        "all",
        "--events",
        "20000",
        "--rate",
        "2k",
        "--duration",
        "500ms",
        "--sweep",
        "5k,20k",
        "--step",
        "300ms",
        "--streams",
        "5",
        "--subscribers",
        "1",
        "--systems",
        "cachecast,udp",
    ]);
    let l = run(&v, "latency", "cachecast");
    assert_eq!(l["offered"], 2000.0);
    assert_eq!(l["publisher"]["published"], 1000);
    assert_eq!(l["subscribers"][0]["received"], 1000, "{l}");
    let p50 = l["p50_us"].as_f64().unwrap();
    let p99 = l["p99_us"].as_f64().unwrap();
    assert!(p50 > 0.0 && p99 >= p50, "{l}");
    let sweep = v["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 4, "2 systems × 2 rates");
    let m = &v["memory"][0];
    assert_eq!(v["streams"], 5);
    assert!(m["sub_rss_mib"].as_f64().unwrap() > 0.0, "{m}");
    assert_eq!(m["subscribers"][0]["received"], 1000, "{m}");
}

#[test]
fn the_table_compares_and_a_missing_peer_is_skipped() {
    let out = bench(&[
        "--mode",
        "throughput",
        "--events",
        "5000",
        "--subscribers",
        "1",
        "--systems",
        "cachecast,udp,redis",
    ]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("events/s") && table.contains("ratio"),
        "{table}"
    );
    // A row of figures for each system that ran (a failed run would be
    // "skipped cachecast: …" and a failed exit).
    for system in ["cachecast", "udp"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(system) && l.contains('%') && l.contains("MiB")),
            "no {system} row: {table}"
        );
    }
    assert!(table.contains("skipped redis"), "{table}");
    assert!(!table.contains("skipped cachecast") && !table.contains("skipped udp"));
}

#[test]
fn bad_options_are_clear_errors() {
    for (args, says) in [
        (&["--key-size", "8"][..], "--key-size"),
        (&["--mode", "throughput", "--plot", "x.svg"][..], "--plot"),
        (&["--group", "10.0.0.1"][..], "not a multicast"),
        (&["--rate", "fast"][..], "not a positive rate"),
    ] {
        let out = bench(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn the_agent_bench_names_a_missing_agent_binary_and_how_to_build_it() {
    let out = Command::new(BIN)
        .args(["agent", "--quiet", "--cachecast", "/nonexistent/cachecast"])
        .output()
        .expect("run cachecast-bench agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/cachecast")
            && err.contains("cargo build --release -p cachecast-cli"),
        "{err}"
    );
}

#[test]
fn the_confirm_bench_confirms_every_event_with_every_member_and_times_both_paths() {
    let out = Command::new(BIN)
        .args([
            "confirm",
            "--quiet",
            "--json",
            "--members",
            "2",
            "--rate",
            "200",
            "--duration",
            "1s",
            "--batch",
            "10",
            "--flat-time",
            "300ms",
        ])
        .output()
        .expect("run cachecast-bench confirm");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(v["members"], 2);
    assert_eq!(v["member_resets"], 0, "{v}");
    let runs = v["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "unconfirmed 200/s",
            "confirmed 200/s",
            "confirmed flat out, 10/publish",
            "unconfirmed flat out, 10/publish"
        ]
    );
    for r in runs {
        let events = r["events"].as_u64().unwrap();
        assert!(events > 0, "{r}");
        assert_eq!(r["missing"], 0, "every member got every event: {r}");
        assert_eq!(r["delivery"]["count"], events * 2, "{r}");
        assert!(r["delivery"]["p50_us"].as_f64().unwrap() > 0.0, "{r}");
        if r["confirmed"] == true {
            let confirmations = r["confirmations"].as_u64().unwrap();
            assert_eq!(confirmations * r["batch"].as_u64().unwrap(), events, "{r}");
            assert_eq!(r["complete"], confirmations, "{r}");
            assert_eq!(r["incomplete"], 0, "{r}");
            assert_eq!(r["confirm"]["count"], confirmations, "{r}");
            assert!(r["confirm"]["p50_us"].as_f64().unwrap() > 0.0, "{r}");
            // Every confirmation asked at least once.
            assert!(r["ack_requests"].as_u64().unwrap() >= 1, "{r}");
        } else {
            assert_eq!(r["confirm"], Value::Null, "{r}");
            assert_eq!(r["confirmations"], 0, "{r}");
        }
    }
}

#[test]
fn the_confirm_bench_refuses_a_group_outside_239_255() {
    let out = Command::new(BIN)
        .args(["confirm", "--quiet", "--group", "239.1.2.3"])
        .output()
        .expect("run cachecast-bench confirm");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("239.255.0.0/16"), "{err}");
}

/// `--auth --encrypt`: keyed cachecast beside unkeyed in the same run,
/// every event delivered, and the comparison reported (its figures are
/// the bench's business, not a test's).
#[test]
fn keyed_runs_sit_beside_cachecast_without_keys() {
    let v = json(&[
        "--mode",
        "throughput,latency",
        "--events",
        "30000",
        "--rate",
        "2k",
        "--duration",
        "300ms",
        "--subscribers",
        "1",
        "--systems",
        "udp",
        "--auth",
        "--encrypt",
    ]);
    let systems: Vec<&str> = v["throughput"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["system"].as_str().unwrap())
        .collect();
    assert_eq!(
        systems,
        ["cachecast", "cachecast-auth", "cachecast-encrypt", "udp"]
    );
    for system in ["cachecast-auth", "cachecast-encrypt"] {
        let t = run(&v, "throughput", system);
        assert_eq!(t["subscribers"][0]["received"], 30_000, "{t}");
        assert_eq!(t["resets"], 0, "{t}");
        let l = run(&v, "latency", system);
        assert_eq!(l["subscribers"][0]["received"], 600, "{l}");
    }
    let auth = v["auth"].as_array().unwrap();
    assert_eq!(auth.len(), 2, "{v}");
    for a in auth {
        assert!(a["throughput_ratio"].as_f64().unwrap() > 0.0, "{a}");
        assert!(a["p99_delta_us"].is_number(), "{a}");
    }
}

/// `forged`: forged datagrams are all dropped as auth_bad_tag, the real
/// events all delivered, no Reset; the CPU per forgery is reported.
#[test]
fn the_forged_bench_drops_every_forgery_and_delivers_every_event() {
    let out = Command::new(BIN)
        .args([
            "forged",
            "--quiet",
            "--json",
            "--rate",
            "5k",
            "--events-rate",
            "500",
            "--duration",
            "400ms",
        ])
        .env_remove("CACHECAST_KEY_FILE")
        .output()
        .expect("run cachecast-bench forged");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    let m = &v["median"];
    for phase in ["baseline", "forged"] {
        let p = &m[phase];
        assert_eq!(p["published"], 200, "{v}");
        assert_eq!(p["delivered"], 200, "{v}");
        assert_eq!(p["resets"], 0, "{v}");
    }
    assert_eq!(m["baseline"]["auth_bad_tag"], 0, "{v}");
    assert_eq!(m["forged_sent"], 2000, "{v}");
    assert_eq!(m["forged"]["auth_bad_tag"], 2000, "{v}");
    assert!(m["cpu_us_per_forged"].as_f64().unwrap() >= 0.0, "{v}");
    let out = Command::new(BIN)
        .args(["forged", "--quiet", "--group", "239.1.2.3"])
        .output()
        .expect("run cachecast-bench forged");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("239.255.0.0/16"));
}
