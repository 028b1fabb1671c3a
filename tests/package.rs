//! The Debian package (`cargo deb -p sse-gateway`): what it installs, how dpkg treats
//! its configuration, its systemd unit, and that the packaged binary accepts the packaged
//! configuration.
//!
//! The package is built once per run from the binary this test suite already runs
//! (`cargo deb --no-build` with the test's own profile and target directory: no release
//! build), into `CARGO_TARGET_TMPDIR/package/`, where it stays for inspection.
//!
//! Needs `cargo-deb` (`cargo install cargo-deb --version 3.8.0 --locked`), `dpkg-deb`
//! (`apt-get install -y dpkg`), `dpkg-shlibdeps` (`dpkg-dev`, for the package's
//! dependencies) and `systemd-analyze` (`systemd`); `.ci/run` installs them. A missing
//! tool fails these tests with what to install, unless `SSE_SKIP_PACKAGE=1` is set,
//! which skips them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::bin;

/// Where the package installs the configuration, the unit and the binary.
const CONFFILE: &str = "etc/sse-gateway/gateway.toml";
const UNIT: &str = "usr/lib/systemd/system/sse-gateway.service";
const BINARY: &str = "usr/bin/sse-gateway";
const DOC_DIR: &str = "usr/share/doc/sse-gateway";

const SKIP_HINT: &str = "(SSE_SKIP_PACKAGE=1 skips the package tests)";

/// The package built for this run and its extracted contents.
#[derive(Debug)]
struct Package {
    deb: PathBuf,
    /// `dpkg-deb -x` of the package: the file system it installs.
    root: PathBuf,
}

/// The package, built on first use; `None` when `SSE_SKIP_PACKAGE=1`. Panics (in every
/// test that asks) when it could not be built.
fn package() -> Option<&'static Package> {
    static PACKAGE: OnceLock<Result<Package, String>> = OnceLock::new();
    if std::env::var_os("SSE_SKIP_PACKAGE").is_some_and(|v| v == "1") {
        eprintln!("package tests skipped: SSE_SKIP_PACKAGE=1");
        return None;
    }
    match PACKAGE.get_or_init(build) {
        Ok(package) => Some(package),
        Err(e) => panic!("{e}"),
    }
}

/// Builds the package with `cargo deb --no-build` from the binary under test and
/// extracts it.
fn build() -> Result<Package, String> {
    require("dpkg-deb", "`apt-get install -y dpkg`")?;
    require("dpkg-shlibdeps", "`apt-get install -y dpkg-dev`")?;
    require("systemd-analyze", "`apt-get install -y systemd`")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let version = Command::new(&cargo).args(["deb", "--version"]).output();
    if !version.is_ok_and(|out| out.status.success()) {
        return Err(format!(
            "cargo-deb not found: `cargo install cargo-deb --version 3.8.0 --locked` \
             (.ci/run does it) {SKIP_HINT}"
        ));
    }

    // The binary under test is <target dir>/<profile dir>/sse-gateway; cargo-deb packages
    // <target dir>/<profile dir>/sse-gateway for `--profile`, where the dev profile's
    // directory is `debug`.
    let exe = Path::new(bin());
    let profile_dir = exe.parent().ok_or("binary without a directory")?;
    let target_dir = profile_dir.parent().ok_or("profile without a directory")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => return Err(format!("no profile in {}", exe.display())),
    };

    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package");
    match std::fs::remove_dir_all(&out_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing {}: {e}", out_dir.display())),
    }
    let root = out_dir.join("root");
    std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    let deb = out_dir.join("sse-gateway.deb");

    // --fast: lighter compression (8 s instead of 45 s for the unoptimized binary);
    // --no-dbgsym: the binary is stripped all the same, its symbols are not packaged.
    let mut cargo_deb = Command::new(&cargo);
    cargo_deb
        .args(["deb", "-p", "sse-gateway", "--no-build", "--locked"])
        .args(["--profile", profile, "--fast", "--no-dbgsym", "--output"])
        .arg(&deb)
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    succeed(&mut cargo_deb)?;
    succeed(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    Ok(Package { deb, root })
}

/// Checks that `tool` runs; else an error saying how to install it.
fn require(tool: &str, install: &str) -> Result<(), String> {
    match Command::new(tool).arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "{tool} cannot run ({e}): {install} (.ci/run does it) {SKIP_HINT}"
        )),
    }
}

/// Runs `cmd`; its stdout when it exits 0, else an error with its output.
fn succeed(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd:?}: {}", failure(&out)))
    }
}

/// A failed command's status and output, for a failure message.
fn failure(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` and returns its stdout; panics when it fails.
fn run(cmd: &mut Command) -> String {
    succeed(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// `dpkg-deb -I <deb> <control file>`: one file of the package's control archive.
fn control_file(package: &Package, name: &str) -> String {
    run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&package.deb)
        .arg(name))
}

/// The packaged unit's settings in `section` (`"[Service]"`), in file order (a key may
/// repeat).
fn unit_settings(package: &Package, section: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(package.root.join(UNIT)).unwrap();
    let mut current = "";
    let mut settings = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if line.starts_with('[') {
            current = line;
            continue;
        }
        if current == section {
            let (key, value) = line.split_once('=').unwrap();
            settings.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    settings
}

/// Every value `key` is given in `settings`.
fn values<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The packaged configuration, parsed.
fn packaged_config(package: &Package) -> toml::Table {
    let text = std::fs::read_to_string(package.root.join(CONFFILE)).unwrap();
    text.parse().unwrap()
}

/// A systemd time span as the unit writes it: seconds (`15`) or with units (`15s`,
/// `1min 30s`).
fn systemd_duration(value: &str) -> Duration {
    match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            humantime::parse_duration(value).unwrap_or_else(|e| panic!("time span {value:?}: {e}"))
        }
    }
}

#[test]
fn the_package_installs_the_binary_the_unit_the_config_and_the_docs() {
    let Some(package) = package() else { return };
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&package.deb));
    // `-rwxr-xr-x root/root 1234 2026-01-01 00:00 ./usr/bin/sse-gateway`
    let mut files = BTreeSet::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(fields.len() >= 6, "unexpected listing line {line:?}");
        let (mode, path) = (fields[0], fields[5].trim_start_matches("./"));
        assert!(
            mode.starts_with(['-', 'd']),
            "only files and directories expected: {line:?}"
        );
        assert!(
            fields[1] == "root/root" || fields[1] == "0/0",
            "not owned by root: {line:?}"
        );
        if mode.starts_with('d') {
            continue;
        }
        let want_mode = if path == BINARY {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(mode, want_mode, "{path}");
        files.insert(path.to_owned());
    }

    let mut want: BTreeSet<String> = [BINARY, CONFFILE, UNIT]
        .into_iter()
        .map(str::to_owned)
        .chain([
            format!("{DOC_DIR}/README.md"),
            format!("{DOC_DIR}/copyright"),
        ])
        .collect();
    // Every document of docs/, so that README's links to docs/… resolve.
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    for entry in std::fs::read_dir(&docs).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            want.insert(format!("{DOC_DIR}/docs/{name}"));
        }
    }
    assert_eq!(files, want, "{listing}");

    // The files are the repository's, not stale copies.
    let readme = format!("{DOC_DIR}/README.md");
    for (packaged, source) in [
        (CONFFILE, "../../packaging/gateway.toml"),
        (UNIT, "../../packaging/sse-gateway.service"),
        (&readme, "../../README.md"),
    ] {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
        assert_eq!(
            std::fs::read(package.root.join(packaged)).unwrap(),
            std::fs::read(&source).unwrap(),
            "{packaged} differs from {}",
            source.display()
        );
    }
}

#[test]
fn the_packaged_config_is_a_conffile() {
    let Some(package) = package() else { return };
    // dpkg keeps an edited conffile on upgrade (asking, or --force-confold/confnew).
    let conffiles = control_file(package, "conffiles");
    let conffiles: Vec<&str> = conffiles.lines().map(str::trim).collect();
    assert_eq!(conffiles, [format!("/{CONFFILE}")]);
}

#[test]
fn the_package_depends_on_the_libraries_the_binary_links() {
    let Some(package) = package() else { return };
    let control = control_file(package, "control");
    let field = |name: &str| {
        control
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {control}"))
    };
    assert_eq!(field("Package"), "sse-gateway");
    assert_eq!(field("Section"), "net");
    assert_eq!(field("Priority"), "optional");
    // `$auto`: dpkg-shlibdeps found the C library the binary links.
    assert!(field("Depends").contains("libc6"), "{control}");
}

#[test]
fn installing_or_upgrading_never_starts_or_restarts_the_service() {
    let Some(package) = package() else { return };
    // A restart drains every open stream: the operator chooses the moment. The unit is
    // not enabled either (`systemctl enable --now` after editing the config).
    let postinst = control_file(package, "postinst");
    let commands: Vec<&str> = postinst
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for action in ["deb-systemd-invoke", "systemctl start", "systemctl restart"] {
        assert!(
            !commands.iter().any(|l| l.contains(action)),
            "postinst runs {action}: {postinst}"
        );
    }
    assert!(
        commands.iter().any(|l| l.contains("daemon-reload")),
        "{postinst}"
    );
    // Removing the package stops it.
    let prerm = control_file(package, "prerm");
    assert!(
        prerm.contains("\"$1\" = remove") && prerm.contains("deb-systemd-invoke stop"),
        "{prerm}"
    );
}

/// A copy of the packaged unit, in a directory of its own named `purpose`, whose
/// `ExecStart` runs the extracted binary: `systemd-analyze` checks that the binary
/// exists, and with `--root=<extracted package>` it would look for everything else
/// (`/bin/kill`, `sysinit.target`) there too.
fn unit_for_analysis(package: &Package, purpose: &str) -> PathBuf {
    let unit = std::fs::read_to_string(package.root.join(UNIT)).unwrap();
    let binary = package.root.join(BINARY);
    let rewritten = unit.replace(&format!("/{BINARY}"), binary.to_str().unwrap());
    assert_ne!(rewritten, unit, "the unit does not run /{BINARY}");
    let dir = package.root.with_file_name(purpose);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sse-gateway.service");
    std::fs::write(&path, rewritten).unwrap();
    path
}

#[test]
fn systemd_analyze_verifies_the_packaged_unit() {
    let Some(package) = package() else { return };
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .arg(unit_for_analysis(package, "verify"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", failure(&out));
    // A setting systemd cannot parse is only a warning ("…, ignoring"): any line about
    // the unit fails the test.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("sse-gateway.service"),
        "systemd-analyze complains about the unit: {stderr}"
    );
}

#[test]
fn systemd_analyze_rates_the_unit_exposure_low() {
    let Some(package) = package() else { return };
    // `systemd-analyze security` rates what the service could do, from 0 (nothing) to 10:
    // the packaged unit is 1.5 with systemd 252. Without its empty capability set it
    // would be 3.3, without its system call filter 3.0; the threshold (tenths) is 2.0.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(unit_for_analysis(package, "security"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", failure(&out));
}

#[test]
fn the_unit_runs_the_packaged_binary_hardened() {
    let Some(package) = package() else { return };
    let settings = unit_settings(package, "[Service]");
    for (key, want) in [
        (
            "ExecStart",
            "/usr/bin/sse-gateway --config /etc/sse-gateway/gateway.toml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        ("LimitNOFILE", "1048576"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RuntimeDirectory", "sse-gateway"),
        ("Restart", "on-failure"),
        // No capability at all: not in the bounding set, none ambient.
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
    ] {
        assert_eq!(values(&settings, key), [want], "{key}");
    }
    // The packaged binary and config exist where ExecStart looks, the documents where
    // Documentation= points.
    assert!(package.root.join(BINARY).is_file());
    assert!(package.root.join(CONFFILE).is_file());
    let unit = unit_settings(package, "[Unit]");
    let docs = values(&unit, "Documentation");
    assert_eq!(docs.len(), 1, "Documentation: {docs:?}");
    for doc in docs[0].split_whitespace() {
        let path = doc
            .strip_prefix("file:/")
            .unwrap_or_else(|| panic!("{doc}"));
        assert!(
            package.root.join(path).is_file(),
            "{doc} is not in the package"
        );
    }
}

#[test]
fn the_unit_binds_the_packaged_ports_without_capabilities() {
    let Some(package) = package() else { return };
    // CapabilityBoundingSet= is empty (checked above), so no listener may need
    // CAP_NET_BIND_SERVICE.
    let config = packaged_config(package);
    for (section, want) in [("server", "0.0.0.0:8080"), ("admin", "127.0.0.1:9090")] {
        let listen = config[section]["listen"].as_str().unwrap();
        assert_eq!(listen, want, "{section}.listen");
        let addr: std::net::SocketAddr = listen.parse().unwrap();
        assert!(addr.port() >= 1024, "{section}.listen needs a capability");
    }
    assert_eq!(
        config["nats"]["url"].as_str(),
        Some("nats://127.0.0.1:4222")
    );
}

#[test]
fn the_unit_gives_the_drain_longer_than_the_grace_period() {
    let Some(package) = package() else { return };
    let settings = unit_settings(package, "[Service]");
    let stop = values(&settings, "TimeoutStopSec");
    assert_eq!(stop.len(), 1, "TimeoutStopSec: {stop:?}");
    let stop = systemd_duration(stop[0]);
    let grace = packaged_config(package)["server"]["grace_period"]
        .as_str()
        .map(humantime::parse_duration)
        .unwrap()
        .unwrap();
    // systemd SIGKILLs what still runs at TimeoutStopSec; the gateway needs the whole
    // grace period plus its exit.
    assert!(
        stop > grace,
        "TimeoutStopSec {stop:?} must exceed server.grace_period {grace:?}"
    );
}

#[test]
fn the_packaged_binary_accepts_the_packaged_config() {
    let Some(package) = package() else { return };
    let out = Command::new(package.root.join(BINARY))
        .arg("--check-config")
        .arg(package.root.join(CONFFILE))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", failure(&out));
}

#[test]
fn the_packaged_config_is_valid_even_when_the_package_tests_are_skipped() {
    let out = sse_testkit::check_config(bin(), include_str!("../packaging/gateway.toml")).unwrap();
    assert!(out.status.success(), "{}", failure(&out));
}
