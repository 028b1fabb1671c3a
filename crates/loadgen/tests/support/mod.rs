//! Test support: a tiny in-process SSE server and a runner for the real binary.

pub mod mini_server;

use std::process::Command;

use serde_json::Value;

/// Runs `sse-loadgen run <args>` and returns (exit code, JSON report or Null, stderr).
pub async fn loadgen(args: Vec<String>) -> (i32, Value, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sse-loadgen"))
            .arg("run")
            .args(&args)
            .output()
            .expect("sse-loadgen runs")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    let json = match lines.as_slice() {
        [] => Value::Null,
        [one] => serde_json::from_str(one).expect("stdout is one JSON line"),
        more => panic!("stdout must be ONE line, got {more:?}"),
    };
    (out.status.code().unwrap_or(-1), json, stderr)
}

/// `["--flag", "value", …]` from pairs.
pub fn args(pairs: &[(&str, &str)]) -> Vec<String> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.push(format!("--{k}"));
        if !val.is_empty() {
            v.push((*val).to_string());
        }
    }
    v
}

/// A JSON field as u64 (panics with the report when missing).
pub fn u(r: &Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not an integer in {r}"))
}
