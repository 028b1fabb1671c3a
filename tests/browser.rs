//! The demo page (`GET /demo`) in a real headless Chromium, driven over WebDriver by a
//! `chromedriver` this test starts: the browser's own `EventSource` subscribes to a
//! JetStream topic, the gateway is SIGKILLed and restarted, and the browser's automatic
//! reconnect (with `Last-Event-ID`) gets exactly what it missed — nothing lost, nothing
//! twice, no `gateway.reset`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get install -y
//! chromium chromium-driver`; `.ci/run` installs them), or `$CHROMIUM_BIN` and
//! `$CHROMEDRIVER_BIN`.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use sse_testkit::{free_port, http};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::support::*;

/// Bound for every wait of this test.
const DEADLINE: Duration = Duration::from_secs(30);
const TOPIC: &str = "browser.t";
const SUBJECT: &str = "sse.browser.t";

/// Chromium's flags: headless, as root, on a machine without network or GPU.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
];

const INSTALL_HINT: &str = "the browser test needs Chromium and its WebDriver: \
     `apt-get install -y chromium chromium-driver` (Debian; `.ci/run` does it), \
     or point $CHROMIUM_BIN and $CHROMEDRIVER_BIN at them";

/// `$env_var`, else `default`; panics with the install hint when it does not exist.
fn binary(env_var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env_var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found: {INSTALL_HINT}",
        path.display()
    );
    path
}

/// A `chromedriver` child process on a free loopback port, in its own process group
/// with the browsers it starts; dropping it kills that group and deletes its directory.
struct ChromeDriver {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl ChromeDriver {
    /// Starts chromedriver and waits until its `/status` answers; tries another port when
    /// the one picked was taken meanwhile.
    async fn start() -> anyhow::Result<ChromeDriver> {
        let bin = binary("CHROMEDRIVER_BIN", "/usr/bin/chromedriver");
        let mut last_error = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("sse-browser-test-")
                .tempdir()?;
            let port = free_port();
            let log = File::create(dir.path().join("chromedriver.log"))?;
            let child = {
                use std::os::unix::process::CommandExt as _;
                Command::new(&bin)
                    .arg(format!("--port={port}"))
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .process_group(0)
                    .spawn()
                    .with_context(|| format!("start {}", bin.display()))?
            };
            let mut driver = ChromeDriver { child, port, dir };
            match driver.wait_ready().await {
                Ok(()) => return Ok(driver),
                Err(e) => last_error = Some(e.context(driver.log())),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("chromedriver exited: {status}");
            }
            if let Ok(r) = http::get(addr, "/status", &[]).await
                && r.status == 200
            {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "chromedriver not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new browser session: headless Chromium with a fresh profile.
    async fn browser(&self) -> anyhow::Result<Client> {
        let chromium = binary("CHROMIUM_BIN", "/usr/bin/chromium");
        let profile = self.dir.path().join("profile");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = serde_json::json!({
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let url = format!("http://127.0.0.1:{}", self.port);
        tokio::time::timeout(
            DEADLINE,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&url),
        )
        .await
        .context("starting Chromium timed out")?
        .with_context(|| format!("start Chromium through chromedriver; log:\n{}", self.log()))
    }

    fn log(&self) -> String {
        let path = self.dir.path().join("chromedriver.log");
        tail(&std::fs::read_to_string(&path).unwrap_or_default())
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The group holds chromedriver and the Chromium processes it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last few thousand bytes of a log.
fn tail(log: &str) -> String {
    let mut start = log.len().saturating_sub(4000);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    log[start..].to_owned()
}

/// What the page exposes as `window.sseDemo`.
#[derive(Debug, Deserialize)]
struct Page {
    opens: u64,
    errors: u64,
    state: String,
    url: String,
    resets: Vec<serde_json::Value>,
    received: Vec<Received>,
}

#[derive(Debug, Deserialize)]
struct Received {
    id: String,
    event: String,
    data: String,
}

impl Page {
    fn data(&self) -> Vec<&str> {
        self.received.iter().map(|e| e.data.as_str()).collect()
    }
}

async fn page(browser: &Client) -> anyhow::Result<Page> {
    let state = browser
        .execute("return window.sseDemo ?? null;", Vec::new())
        .await?;
    anyhow::ensure!(!state.is_null(), "window.sseDemo is not there yet");
    Ok(serde_json::from_value(state)?)
}

/// Polls the page until `done` holds; fails after [`DEADLINE`] with the page's state and
/// the gateway's log.
async fn wait_page(
    browser: &Client,
    gw: &Gateway,
    what: &str,
    done: impl Fn(&Page) -> bool,
) -> Page {
    // The last state read, for the failure message (the last attempt may be cut short).
    let last = std::sync::Mutex::new(String::from("<never read>"));
    eventually(DEADLINE, what, || async {
        let page = page(browser).await?;
        *last.lock().unwrap() = format!("{page:?}");
        anyhow::ensure!(done(&page), "not yet");
        Ok(page)
    })
    .await
    .with_context(|| {
        let page = last.lock().unwrap();
        format!("page: {page}\ngateway log:\n{}", tail(&gw.log()))
    })
    .unwrap()
}

/// Publishes `i` through JetStream, stored once (see `support::publish_stored`).
async fn publish_i(js: &jetstream::Context, i: u32) {
    publish_stored(
        js,
        SUBJECT,
        &format!("browser-{i}"),
        &i.to_string(),
        DEADLINE,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_reconnects_after_gateway_restart_and_misses_nothing() {
    let nats = NatsServer::start().unwrap();
    let mut gw = ready(&nats, |b| {
        b.set("jetstream", "enabled", "true")
            .set("sse", "retry", "\"300ms\"")
    })
    .await;
    let js = jetstream::new(nats.client().await.unwrap());
    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser().await.unwrap();

    let url = format!("http://{}/demo?topics={TOPIC}&autostart=1", gw.addr());
    browser.goto(&url).await.unwrap();
    wait_page(&browser, &gw, "the page's stream to open", |p| p.opens >= 1).await;

    for i in 1..=10 {
        publish_i(&js, i).await;
    }
    wait_page(&browser, &gw, "events 1..=10", |p| p.received.len() >= 10).await;

    // Down: the browser's reconnects are refused while 11..=15 are stored in the stream.
    gw.kill();
    for i in 11..=15 {
        publish_i(&js, i).await;
    }
    gw.restart().await.unwrap();
    for i in 16..=20 {
        publish_i(&js, i).await;
    }
    let page = wait_page(&browser, &gw, "events 1..=20", |p| p.received.len() >= 20).await;

    let want: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    assert_eq!(page.data(), want, "exactly 1..=20 in order: {page:?}");
    assert!(page.resets.is_empty(), "no gateway.reset: {page:?}");
    assert!(
        page.received
            .iter()
            .all(|e| e.event == "message" && !e.id.is_empty()),
        "{page:?}"
    );
    assert!(page.opens >= 2, "the browser reconnected: {page:?}");
    assert!(page.errors >= 1, "the page saw the gateway go: {page:?}");
    assert_eq!(page.state, "open", "{page:?}");
    // The same EventSource throughout: the browser resumed with its Last-Event-ID
    // header, not the page with a new stream and `?last_event_id=`.
    assert_eq!(page.url, format!("/events?topic={TOPIC}"), "{page:?}");
    // 11..=15 came from the new process's replay of the stream, asked for by the
    // browser's Last-Event-ID.
    let replayed = metric(&gw, "sse_replayed_events_total", &[]).await;
    assert!(replayed >= 5.0, "replayed {replayed}");

    browser.close().await.unwrap();
}

/// What the page knows of its tickets and the gateway's closes.
#[derive(Debug, Deserialize)]
struct TicketState {
    tickets: u64,
    closes: Vec<Received>,
}

/// JetStream topics, a short `retry:`, auth with tickets.
fn with_tickets(b: GatewayBuilder) -> GatewayBuilder {
    auth_on(b)
        .set("jetstream", "enabled", "true")
        .set("sse", "retry", "\"300ms\"")
        .set(
            "auth",
            "ticket_secret",
            "\"a-ticket-secret-for-the-browser-test\"",
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_streams_through_tickets_and_renews_at_token_expiry_without_loss() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, with_tickets).await;
    let js = jetstream::new(nats.client().await.unwrap());
    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser().await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let short = hs256(serde_json::json!({"subscribe": [TOPIC], "exp": now + 3}));
    let long = hs256(serde_json::json!({"subscribe": [TOPIC], "exp": now + 600}));

    let url = format!("http://{}/demo?topics={TOPIC}", gw.addr());
    browser.goto(&url).await.unwrap();
    wait_page(&browser, &gw, "the page", |_| true).await;
    let set_token = "document.getElementById('token').value = arguments[0];";
    browser
        .execute(set_token, vec![serde_json::json!(short)])
        .await
        .unwrap();
    browser
        .execute("document.getElementById('connect').click();", Vec::new())
        .await
        .unwrap();
    let page = wait_page(&browser, &gw, "the stream to open", |p| p.opens >= 1).await;
    assert!(page.url.contains("ticket=…"), "a ticket, elided: {page:?}");
    assert!(!page.url.contains("access_token"), "{page:?}");
    for i in 1..=5 {
        publish_i(&js, i).await;
    }
    wait_page(&browser, &gw, "events 1..=5", |p| p.received.len() >= 5).await;
    // The user logs in again before the first token runs out: the page renews with it.
    browser
        .execute(set_token, vec![serde_json::json!(long)])
        .await
        .unwrap();
    for i in 6..=40 {
        publish_i(&js, i).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = wait_page(&browser, &gw, "events 1..=40", |p| {
        p.data().iter().filter(|d| !d.starts_with('{')).count() >= 40
    })
    .await;
    let data: Vec<&str> = page
        .received
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.data.as_str())
        .collect();
    let want: Vec<String> = (1..=40).map(|i| i.to_string()).collect();
    assert_eq!(data, want, "exactly 1..=40 in order: {page:?}");
    assert!(page.resets.is_empty(), "{page:?}");
    let tickets: TicketState = serde_json::from_value(
        browser
            .execute("return window.sseDemo;", Vec::new())
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(tickets.tickets >= 2, "a second ticket: {tickets:?}");
    assert_eq!(tickets.closes.len(), 1, "{tickets:?}");
    assert_eq!(tickets.closes[0].data, r#"{"reason":"token_expired"}"#);
    assert_eq!(page.state, "open", "{page:?}");
    let log = gw.log();
    assert!(
        !log.contains(&short) && !log.contains(&long),
        "tokens stay out of logs"
    );
    browser.close().await.unwrap();
}

// ----- the JavaScript client (/client.js): one stream per browser -------------------

/// Loads `/client.js` in the current tab and subscribes `topic` with sharing `mode`
/// (`"worker"`, or `"broadcast"`: the page's `SharedWorker` is removed and the client
/// left to choose); events land in `window.got`. Returns the mode the client picked.
async fn client_subscribe(
    browser: &Client,
    mode: &str,
    topic: &str,
    token: Option<&str>,
) -> String {
    let script = r#"
        const [mode, topic, token, done] = arguments;
        import("/client.js").then((m) => {
            window.got = window.got || [];
            window.resets = window.resets || [];
            window.closes = window.closes || [];
            window.errors = window.errors || [];
            window.token = token;
            if (!window.client) {
                // "broadcast": SharedWorker taken away, the client picks on its own.
                if (mode === "broadcast") window.SharedWorker = undefined;
                const options = { shared: mode === "broadcast" ? "auto" : mode };
                if (token) options.getToken = async () => window.token;
                window.client = m.connect(options);
            }
            window.client.subscribe(topic, (e) => window.got.push({ id: e.id, data: e.data, topic: e.topic }), {
                onReset: (r) => window.resets.push(r),
                onClose: (r) => window.closes.push(r),
                onError: (e) => window.errors.push(String(e && e.message || e)),
            });
            done(window.client.mode);
        }).catch((e) => done("error: " + e));
    "#;
    let args = vec![
        serde_json::json!(mode),
        serde_json::json!(topic),
        serde_json::json!(token),
    ];
    let picked = browser.execute_async(script, args).await.unwrap();
    picked.as_str().unwrap_or_default().to_owned()
}

/// The data of the events the current tab received.
async fn client_got(browser: &Client) -> Vec<String> {
    let v = browser
        .execute("return (window.got || []).map((e) => e.data);", Vec::new())
        .await
        .unwrap();
    serde_json::from_value(v).unwrap_or_default()
}

/// Waits until the current tab has received `n` events; returns their data.
async fn wait_got(browser: &Client, gw: &Gateway, what: &str, n: usize) -> Vec<String> {
    let last = std::sync::Mutex::new(Vec::new());
    eventually(DEADLINE, what, || async {
        let got = client_got(browser).await;
        *last.lock().unwrap() = got.clone();
        anyhow::ensure!(got.len() >= n, "{} of {n}", got.len());
        Ok(got)
    })
    .await
    .with_context(|| {
        format!(
            "got {:?}\ngateway log:\n{}",
            last.lock().unwrap(),
            tail(&gw.log())
        )
    })
    .unwrap()
}

/// The gateway's open streams (operator API).
async fn open_streams(gw: &Gateway) -> Vec<serde_json::Value> {
    let body = http::get(gw.admin_addr(), "/api/streams", &[])
        .await
        .unwrap()
        .json()
        .unwrap();
    body["streams"].as_array().cloned().unwrap_or_default()
}

/// Opens `tabs` tabs of the gateway's origin; their window handles.
async fn open_tabs(
    browser: &Client,
    gw: &Gateway,
    tabs: usize,
) -> Vec<fantoccini::wd::WindowHandle> {
    let url = format!("http://{}/demo", gw.addr());
    let mut handles = vec![browser.window().await.unwrap()];
    browser.goto(&url).await.unwrap();
    for _ in 1..tabs {
        let tab = browser.new_window(true).await.unwrap();
        browser.switch_to_window(tab.handle.clone()).await.unwrap();
        browser.goto(&url).await.unwrap();
        handles.push(tab.handle);
    }
    handles
}

/// Three tabs subscribe to three topics in `mode`: ONE stream carries all three, each
/// tab gets exactly its own topic's events; then the tab holding the stream (the worker
/// survives any tab; in broadcast mode the first tab leads) closes and, on a JetStream
/// topic, the others miss nothing.
async fn three_tabs_share_one_stream(mode: &str) {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| {
        b.set("jetstream", "enabled", "true")
            .set("sse", "stream_control", "true")
            .set("sse", "retry", "\"300ms\"")
    })
    .await;
    let js = jetstream::new(nats.client().await.unwrap());
    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser().await.unwrap();
    let tabs = open_tabs(&browser, &gw, 3).await;
    for (i, tab) in tabs.iter().enumerate() {
        browser.switch_to_window(tab.clone()).await.unwrap();
        let picked = client_subscribe(&browser, mode, &format!("tab.{i}"), None).await;
        assert_eq!(picked, mode, "the client runs in the mode asked for");
    }
    eventually(DEADLINE, "one stream with the three topics", || async {
        let streams = open_streams(&gw).await;
        anyhow::ensure!(streams.len() == 1, "{streams:?}");
        let mut topics: Vec<String> =
            serde_json::from_value(streams[0]["topics"].clone()).unwrap_or_default();
        topics.sort();
        anyhow::ensure!(topics == ["tab.0", "tab.1", "tab.2"], "{topics:?}");
        Ok(())
    })
    .await
    .unwrap();
    for round in 1..=3 {
        for i in 0..3 {
            let value = format!("{i}-{round}");
            publish_stored(&js, &format!("sse.tab.{i}"), &value, &value, DEADLINE).await;
        }
    }
    for (i, tab) in tabs.iter().enumerate() {
        browser.switch_to_window(tab.clone()).await.unwrap();
        let got = wait_got(&browser, &gw, &format!("tab {i}'s events"), 3).await;
        let want: Vec<String> = (1..=3).map(|r| format!("{i}-{r}")).collect();
        assert_eq!(got, want, "tab {i} gets exactly its topic");
    }
    // The first tab goes; events keep coming; the other two miss none of theirs.
    browser.switch_to_window(tabs[0].clone()).await.unwrap();
    browser.close_window().await.unwrap();
    for round in 4..=20 {
        for i in 1..3 {
            let value = format!("{i}-{round}");
            publish_stored(&js, &format!("sse.tab.{i}"), &value, &value, DEADLINE).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, tab) in tabs.iter().enumerate().skip(1) {
        browser.switch_to_window(tab.clone()).await.unwrap();
        let got = wait_got(&browser, &gw, &format!("tab {i} after the hand-over"), 20).await;
        let want: Vec<String> = (1..=20).map(|r| format!("{i}-{r}")).collect();
        assert_eq!(got, want, "tab {i}: every event once, in order");
    }
    eventually(DEADLINE, "still one stream", || async {
        let streams = open_streams(&gw).await;
        anyhow::ensure!(streams.len() == 1, "{streams:?}");
        Ok(())
    })
    .await
    .unwrap();
    browser.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_three_tabs_share_one_stream_through_a_shared_worker() {
    three_tabs_share_one_stream("worker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_three_tabs_share_one_stream_through_a_broadcast_leader() {
    three_tabs_share_one_stream("broadcast").await;
}

/// A reload of the only tab resumes (the last id is kept in sessionStorage) and a token
/// expiring mid-stream is renewed through a ticket: nothing lost either way.
async fn reload_and_token_renewal_lose_nothing(mode: &str) {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| {
        with_tickets(b).set("sse", "stream_control", "true")
    })
    .await;
    let js = jetstream::new(nats.client().await.unwrap());
    let driver = ChromeDriver::start().await.unwrap();
    let browser = driver.browser().await.unwrap();
    let tabs = open_tabs(&browser, &gw, 1).await;
    browser.switch_to_window(tabs[0].clone()).await.unwrap();
    // A token that runs out in ≤ 3 s: the client renews it mid-stream (getToken is asked
    // again, and the page hands out a long-lived one from then on).
    let short = hs256(serde_json::json!({"sub": "u1", "subscribe": ["renew.>"], "exp": now() + 3}));
    let long =
        hs256(serde_json::json!({"sub": "u1", "subscribe": ["renew.>"], "exp": now() + 600}));
    assert_eq!(
        client_subscribe(&browser, mode, "renew.a", Some(&short)).await,
        mode
    );
    // The stream is open on the short token's ticket before the page switches tokens.
    eventually(DEADLINE, "the stream open", || async {
        anyhow::ensure!(open_streams(&gw).await.len() == 1, "not yet");
        Ok(())
    })
    .await
    .unwrap();
    browser
        .execute(
            "window.token = arguments[0];",
            vec![serde_json::json!(long)],
        )
        .await
        .unwrap();
    for i in 1..=40 {
        publish_i_on(&js, "sse.renew.a", i).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = wait_got(&browser, &gw, "1..=40 across the token's expiry", 40).await;
    let want: Vec<String> = (1..=40).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
    let closes = metric(
        &gw,
        "sse_streams_closed_total",
        &[("reason", "token_expired")],
    )
    .await;
    assert!(closes >= 1.0, "the token did expire mid-stream");
    // Reload: events published while the page is away come after it resubscribes.
    browser.refresh().await.unwrap();
    for i in 41..=50 {
        publish_i_on(&js, "sse.renew.a", i).await;
    }
    assert_eq!(
        client_subscribe(&browser, mode, "renew.a", Some(&long)).await,
        mode
    );
    for i in 51..=55 {
        publish_i_on(&js, "sse.renew.a", i).await;
    }
    let got = wait_got(&browser, &gw, "41..=55 after the reload", 15).await;
    let want: Vec<String> = (41..=55).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "resumed from the last id of before the reload");
    let log = gw.log();
    assert!(!log.contains(&short) && !log.contains(&long));
    browser.close().await.unwrap();
}

/// Publishes `i` to `subject` through JetStream, stored once.
async fn publish_i_on(js: &jetstream::Context, subject: &str, i: u32) {
    publish_stored(
        js,
        subject,
        &format!("{subject}-{i}"),
        &i.to_string(),
        DEADLINE,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reload_and_token_renewal_lose_nothing_through_a_shared_worker() {
    reload_and_token_renewal_lose_nothing("worker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reload_and_token_renewal_lose_nothing_through_a_broadcast_leader() {
    reload_and_token_renewal_lose_nothing("broadcast").await;
}
