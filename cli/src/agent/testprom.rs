//! The tests' check of a Prometheus exposition with a real, independent
//! parser (the Python Prometheus client's), shared by the agent's unit
//! tests and, by `#[path]`, its end-to-end tests: std and serde_json only.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Parses the exposition with the Python Prometheus client's parsers (a
/// real, independent implementation): the strict OpenMetrics one (the
/// format prometheus-client writes) and the classic text one. Returns
/// every sample as `name{labels}` → value, and every family's type.
/// Fails, never skips, when python3 or the module is missing.
pub fn parse(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
from prometheus_client.parser import text_string_to_metric_families as classic
text = sys.stdin.read()
samples, types = {}, {}
for f in om(text):
    types[f.name] = f.type
    for s in f.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        samples["%s{%s}" % (s.name, labels)] = s.value
n = sum(len(f.samples) for f in classic(text))
assert n == len(samples), (n, len(samples))
print(json.dumps({"samples": samples, "types": types}))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed to check /metrics with a real Prometheus parser");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition (pip install prometheus_client?):\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = v["samples"].as_object().unwrap();
    let types = v["types"].as_object().unwrap();
    (
        samples
            .iter()
            .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
            .collect(),
        types
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect(),
    )
}
