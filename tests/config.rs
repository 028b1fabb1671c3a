//! Configuration errors: named keys on stderr, non-zero exit, for both modes.

use std::time::Duration;

use crate::support::*;

#[test]
fn check_config_accepts_the_example() {
    let text = include_str!("../gateway.toml");
    let out = sse_testkit::check_config(bin(), text).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    for (text, needle) in [
        ("[sse]\nheartbeet = \"1s\"\n", "heartbeet"),
        ("[sse]\nretry = 15\n", "retry"),
        ("[sse]\nclient_buffer = 0\n", "sse.client_buffer"),
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ("[mystery]\n", "mystery"),
    ] {
        let check = sse_testkit::check_config(bin(), text).unwrap();
        assert!(!check.status.success(), "{text:?} accepted");
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert!(stderr.contains(needle), "{text:?}: {stderr}");

        let run = sse_testkit::run_config(bin(), text, Duration::from_secs(20)).unwrap();
        assert!(!run.status.success(), "{text:?} ran");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(needle), "{text:?}: {stderr}");
    }
}
