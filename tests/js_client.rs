//! The JavaScript client's own unit tests (`clients/js/test`, node's test runner, no
//! dependencies), run as part of `cargo test` so that one command runs every test. Its
//! behaviour in a real browser against the real gateway is in `browser.rs`.

use std::process::Command;

#[test]
fn the_javascript_client_unit_tests_pass() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../clients/js");
    let out = Command::new("node")
        .args(["--test", "test/"])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run node ({e}): the client's tests need Node.js >= 20 (apt-get install -y nodejs)")
        });
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("# fail 0"), "{report}");
}
