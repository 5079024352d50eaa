//! `cachecast doctor` through the built binary, on loopback only: a fresh
//! group in 239.255.0.0/16 and a free port per test, interface 127.0.0.1,
//! TTL 0, so nothing leaves the host and parallel tests never meet.

use crate::process;
use process::{finish, loopback};

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cachecast");

fn doctor(net: &[String], extra: &[&str]) -> (Output, String, String) {
    let child = Command::new(BIN)
        .arg("doctor")
        .args(net)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(child);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn the_probe_is_heard_on_loopback() {
    let (out, stdout, stderr) = doctor(&loopback(None), &[]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("\ninterfaces\n"), "{stdout}");
    assert!(stdout.contains("chosen by address (127.0.0.1"), "{stdout}");
    assert!(stdout.contains("came back to both sockets"), "{stdout}");
    assert!(
        stdout.contains("\ndirect repairs\n") && stdout.contains("goes to it alone"),
        "{stdout}"
    );
    assert!(
        stdout.contains("TTL 0: datagrams stay on this host"),
        "{stdout}"
    );
    assert!(stdout.contains("IP_MULTICAST_ALL off"), "{stdout}");
    assert!(stdout.contains("net.core.rmem_max"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert_eq!(
        stdout.trim_end().lines().last(),
        Some("doctor: OK"),
        "{stdout}"
    );
}

#[test]
fn json_report_has_the_fields() {
    let net = loopback(None);
    let (out, stdout, stderr) = doctor(&net, &["--json"]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["problems"], 0);
    assert_eq!(v["group"], net[1].as_str());
    assert_eq!(v["ttl"], 0);
    let interfaces = v["interfaces"].as_array().unwrap();
    let used: Vec<&Value> = interfaces.iter().filter(|i| i["used"] == true).collect();
    assert_eq!(used.len(), 1, "{v:#}");
    assert!(used[0]["addrs"]
        .as_array()
        .unwrap()
        .contains(&Value::from("127.0.0.1")));
    assert_eq!(v["interface"]["chosen_by"], "address");
    assert_eq!(v["interface"]["addr"], "127.0.0.1");
    assert_eq!(v["probe"]["heard"], true);
    assert_eq!(v["probe"]["heard_by"], serde_json::json!([true, true]));
    assert!(v["probe"]["latency_ms"][1].as_f64().unwrap() < 1000.0);
    assert_eq!(v["multicast_loop"], true);
    assert_eq!(v["multicast_all"], false);
    assert!(v["recv_buffer"]["rmem_max"].as_u64().unwrap() > 0);
    assert!(v["recv_buffer"]["granted"].as_u64().unwrap() > 0);
    assert!(v["recv_buffer"]["requested"].as_u64().unwrap() > 0);
    let findings = v["findings"].as_array().unwrap();
    assert!(findings
        .iter()
        .any(|f| f["section"] == "probe" && f["status"] == "ok"));
    // Both legs of a directed repair, on the direct socket's own port.
    assert_eq!(v["direct"]["nak_heard"], true, "{v:#}");
    assert_eq!(v["direct"]["repair_heard"], true, "{v:#}");
    let port = v["direct"]["port"].as_u64().unwrap();
    assert!(port > 0 && port != net[1].rsplit(':').next().unwrap().parse::<u64>().unwrap());
    assert!(v["direct"]["source"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{port}")));
    assert!(findings
        .iter()
        .any(|f| f["section"] == "direct" && f["status"] == "ok"));
}

#[test]
fn without_direct_repairs_the_check_is_skipped_and_said() {
    let (out, stdout, stderr) = doctor(&loopback(None), &["--direct-repairs", "false", "--json"]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert!(v["direct"].is_null(), "{v:#}");
    let findings = v["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["section"] == "direct"
            && f["status"] == "info"
            && f["message"].as_str().unwrap().contains("off")),
        "{v:#}"
    );
}

#[test]
fn a_group_that_is_not_multicast_fails_clearly() {
    let (out, stdout, stderr) = doctor(&loopback(Some("10.11.12.13")), &[]);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("FAIL  10.11.12.13:")
            && stdout.contains("is not a multicast group address"),
        "{stdout}"
    );
    assert!(stdout.contains("probe skipped"), "{stdout}");
    assert_eq!(
        stdout.trim_end().lines().last(),
        Some("doctor: 1 problem(s)")
    );
    assert!(stderr.contains("not a multicast group address"), "{stderr}");

    let (out, stdout, _) = doctor(&loopback(Some("10.11.12.13")), &["--json"]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"], 1);
    assert!(v["probe"].is_null());
}

#[test]
fn an_unknown_interface_fails_naming_it_and_listing_the_others() {
    let mut net = loopback(None);
    net[3] = "nosuchif9".into();
    let (out, stdout, stderr) = doctor(&net, &[]);
    assert!(!out.status.success(), "{stdout}");
    let fail = stdout
        .lines()
        .find(|l| l.contains("FAIL"))
        .unwrap_or_else(|| panic!("a FAIL line in {stdout}"));
    assert!(fail.contains("no interface nosuchif9"), "{fail}");
    assert!(fail.contains("available interfaces:"), "{fail}");
    assert!(stderr.contains("nosuchif9"), "{stderr}");

    // Every interface of the host is named, in the report and the message.
    let (out, stdout, _) = doctor(&net, &["--json"]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let problem = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["status"] == "problem")
        .unwrap();
    assert_eq!(problem["section"], "interface");
    let message = problem["message"].as_str().unwrap();
    let names: Vec<&str> = v["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(!names.is_empty());
    for name in names {
        assert!(message.contains(name), "{name} in {message}");
    }
}

/// Kills and reaps the child when dropped, also when a test fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn other_nodes_of_the_cluster_answer_the_probe() {
    let net = loopback(None);
    let mut listen = KillOnDrop(
        Command::new(BIN)
            .arg("listen")
            .args(&net)
            .args(["--name", "peer-of-doctor", "--timeout", "15s"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = listen.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("listen ready");
    assert!(ready.contains("\"ready\""), "{ready}");

    let (out, stdout, stderr) = doctor(&net, &["--json"]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let peers = v["probe"]["peers"].as_array().unwrap();
    assert!(peers.iter().any(|p| p["node"] == "peer-of-doctor"), "{v:#}");
    // The probe publishes nothing: the listener delivers nothing for it.
    if let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
        panic!("listen delivered {line}");
    }
}

#[test]
fn help_says_what_it_does_and_what_it_sends() {
    let child = Command::new(BIN)
        .args(["doctor", "--help"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(child);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "What it does",
        "What it sends",
        "only to the group",
        "direct-repair check",
        "--interface 127.0.0.1 --ttl 0",
        "on your LAN",
        "net.core.rmem_max",
        "--json",
        "Exit status",
    ] {
        assert!(help.contains(needle), "{needle:?} in\n{help}");
    }
}
