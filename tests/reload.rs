//! SIGHUP reload (protocol §12): live keys apply to new requests while open streams keep
//! streaming; an invalid file changes nothing; `--check-config --against` tells live
//! keys from restart keys.

use sse_testkit::http;

use crate::support::*;

/// The HS256 secret the reloaded files rotate to.
const ROTATED_SECRET: &str = "the-rotated-hs256-secret-of-the-reload-tests";

fn token_signed_with(secret: &str, topics: &[&str]) -> String {
    hs256_with(
        secret,
        serde_json::json!({"sub": "u1", "subscribe": topics, "exp": now() + 600}),
    )
}

/// Waits until `path` is proxied to the upstream called `name`.
async fn route_serves(gw: &Gateway, path: &str, name: &str) {
    eventually(WAIT, &format!("{path} proxied to {name}"), || async {
        let r = http::get(gw.addr(), path, &[]).await?;
        anyhow::ensure!(
            r.status == 200 && r.text().starts_with(name),
            "{}",
            r.status
        );
        Ok(())
    })
    .await
    .unwrap();
}

/// Replaces the gateway's file in one step (a reader never sees half of it).
fn rewrite(gw: &Gateway, edit: impl FnOnce(String) -> String) {
    let path = gw.config_path();
    let text = std::fs::read_to_string(path).unwrap();
    let new = edit(text.clone());
    assert_ne!(new, text, "the edit changed nothing");
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, new).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn status_of(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> u16 {
    http::get(gw.addr(), path, headers).await.unwrap().status
}

async fn allowed_origin(gw: &Gateway, origin: &str) -> Option<String> {
    let r = http::request(
        gw.addr(),
        "OPTIONS",
        "/events/news.x",
        &[("Origin", origin), ("Access-Control-Request-Method", "GET")],
        b"",
    )
    .await
    .unwrap();
    r.header("access-control-allow-origin").map(str::to_owned)
}

async fn running_keys(gw: &Gateway) -> serde_json::Value {
    http::get(gw.admin_addr(), "/api/config", &[])
        .await
        .unwrap()
        .json()
        .unwrap()["keys"]
        .clone()
}

/// Reads `stream` until `n` events have come, returning them and every `retry:` seen.
async fn events_and_retries(stream: &mut SseStream, n: usize) -> (Vec<Event>, Vec<u64>) {
    let (mut events, mut retries) = (Vec::new(), Vec::new());
    while events.len() < n {
        match stream.next_item(WAIT).await.unwrap() {
            Some(Item::Event(e)) => events.push(e),
            Some(Item::Retry(ms)) => retries.push(ms),
            Some(Item::Comment(_)) => {}
            None => panic!("the stream ended after {} events", events.len()),
        }
    }
    (events, retries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_cors_routes_auth_keys_and_limits_while_a_stream_keeps_receiving() {
    let nats = NatsServer::start().unwrap();
    let (one, _one) = crate::routes::upstream("one").await;
    let (two, _two) = crate::routes::upstream("two").await;
    let gw = ready(&nats, |b| {
        auth_on(b)
            .set("cors", "allowed_origins", "[\"https://a.example\"]")
            .set("sse", "max_topics_per_connection", "4")
            .raw(&format!(
                "[[routes]]\nprefix = \"/one\"\nupstreams = [\"{one}\"]\n"
            ))
    })
    .await;
    route_serves(&gw, "/one/x", "one").await;
    let old_token = token_signed_with(AUTH_SECRET, &["private.>"]);
    let new_token = token_signed_with(ROTATED_SECRET, &["private.>"]);
    let bearer = |t: &str| format!("Bearer {t}");
    assert_eq!(
        status_of(
            &gw,
            "/events/private.a",
            &[("Authorization", &bearer(&new_token))]
        )
        .await,
        401
    );

    // A stream open across the reload.
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut stream = open(&gw, "/events/news.live").await;
    for i in 1..=5 {
        publish(&nc, "sse.news.live", i.to_string(), None)
            .await
            .unwrap();
    }
    let (before, _) = events_and_retries(&mut stream, 5).await;

    rewrite(&gw, |text| {
        text.replace("https://a.example", "https://b.example")
            .replace(AUTH_SECRET, ROTATED_SECRET)
            .replace(
                &format!("prefix = \"/one\"\nupstreams = [\"{one}\"]"),
                &format!("prefix = \"/two\"\nupstreams = [\"{two}\"]"),
            )
            .replace(
                "max_topics_per_connection = 4",
                "max_topics_per_connection = 1\nretry = \"4500ms\"\nheartbeat = \"1s\"",
            )
    });
    gw.reload();
    wait_metric(&gw, "sse_config_reloads_total", &[("result", "ok")], 1.0).await;

    // New requests see the new file.
    assert_eq!(
        allowed_origin(&gw, "https://b.example").await.as_deref(),
        Some("https://b.example")
    );
    assert_eq!(allowed_origin(&gw, "https://a.example").await, None);
    assert_eq!(
        status_of(
            &gw,
            "/events/private.a",
            &[("Authorization", &bearer(&old_token))]
        )
        .await,
        401,
        "a token of the old key"
    );
    let mut private = SseStream::open(
        gw.addr(),
        "/events/private.a",
        &[("Authorization", &bearer(&new_token))],
    )
    .await
    .unwrap();
    assert_eq!(private.status(), 200, "a token of the new key");
    private.next_item(WAIT).await.unwrap();
    route_serves(&gw, "/two/x", "two").await;
    assert_eq!(
        status_of(&gw, "/one/x", &[]).await,
        404,
        "the removed route"
    );

    // The open stream: every event, in order, no reset, and the new retry announced.
    for i in 6..=10 {
        publish(&nc, "sse.news.live", i.to_string(), None)
            .await
            .unwrap();
    }
    let (after, retries) = events_and_retries(&mut stream, 5).await;
    let data: Vec<String> = before
        .iter()
        .chain(&after)
        .map(|e| e.data.clone())
        .collect();
    let want: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    assert_eq!(data, want, "no gap, no reset");
    let mut retries = retries;
    while !retries.contains(&4500) {
        match stream.next_item(WAIT).await.unwrap() {
            Some(Item::Retry(ms)) => retries.push(ms),
            Some(_) => {}
            None => panic!("the stream ended"),
        }
    }

    // What is in force: live keys new, restart keys old (and named in the log).
    let keys = running_keys(&gw).await;
    assert_eq!(keys["sse.retry"], "\"4s 500ms\"");
    assert_eq!(keys["cors.allowed_origins"], "[\"https://b.example\"]");
    assert_eq!(keys["sse.max_topics_per_connection"], "4");
    assert!(
        !keys.to_string().contains(ROTATED_SECRET),
        "secrets are fingerprints"
    );
    let log = gw.log();
    assert!(
        log.contains("configuration reloaded") && log.contains("cors.allowed_origins"),
        "{log}"
    );
    assert!(
        log.contains("keep their old value until a restart")
            && log.contains("sse.max_topics_per_connection"),
        "{log}"
    );
    assert!(!log.contains(ROTATED_SECRET), "no secret in the log");

    // Limits: a tight token bucket applies to the next requests…
    rewrite(&gw, |text| {
        text.replace("connect_rate_per_ip = 100000", "connect_rate_per_ip = 1")
            .replace("connect_burst_per_ip = 100000", "connect_burst_per_ip = 2")
    });
    gw.reload();
    wait_metric(&gw, "sse_config_reloads_total", &[("result", "ok")], 2.0).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(status_of(&gw, "/nope", &[]).await);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // … and roomy again after the next.
    rewrite(&gw, |text| {
        text.replace(
            "connect_rate_per_ip = 1\n",
            "connect_rate_per_ip = 100000\n",
        )
        .replace(
            "connect_burst_per_ip = 2\n",
            "connect_burst_per_ip = 100000\n",
        )
    });
    gw.reload();
    wait_metric(&gw, "sse_config_reloads_total", &[("result", "ok")], 3.0).await;
    publish(&nc, "sse.news.live", "11", None).await.unwrap();
    let (last, _) = events_and_retries(&mut stream, 1).await;
    assert_eq!(last[0].data, "11", "the first stream is still open");
    assert_eq!(
        metric(&gw, "sse_config_reloads_total", &[("result", "error")]).await,
        0.0
    );
    a_normal_client_still_streams_with_key(&gw, ROTATED_SECRET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_on_sighup_changes_nothing_and_is_counted() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| {
        b.set("cors", "allowed_origins", "[\"https://a.example\"]")
    })
    .await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut stream = open(&gw, "/events/t").await;
    publish(&nc, "sse.t", "1", None).await.unwrap();
    assert_eq!(stream.next_event(WAIT).await.unwrap().data, "1");

    // A good change next to a bad key: refused whole.
    rewrite(&gw, |text| {
        text.replace("https://a.example", "https://b.example")
            .replace("[cors]", "[cors]\nallowed_origin = \"typo\"")
    });
    gw.reload();
    wait_metric(&gw, "sse_config_reloads_total", &[("result", "error")], 1.0).await;
    assert_eq!(
        metric(&gw, "sse_config_reloads_total", &[("result", "ok")]).await,
        0.0
    );
    assert_eq!(
        allowed_origin(&gw, "https://a.example").await.as_deref(),
        Some("https://a.example"),
        "the old configuration stays"
    );
    assert_eq!(allowed_origin(&gw, "https://b.example").await, None);
    let log = gw.log();
    assert!(
        log.contains("configuration reload refused") && log.contains("allowed_origin"),
        "the error names the key: {log}"
    );
    // A value out of range: refused too.
    rewrite(&gw, |text| {
        text.replace("allowed_origin = \"typo\"\n", "")
            .replace("[limits]", "[limits]\nmax_connections = 0")
    });
    gw.reload();
    wait_metric(&gw, "sse_config_reloads_total", &[("result", "error")], 2.0).await;
    assert_eq!(allowed_origin(&gw, "https://b.example").await, None);

    // The stream never noticed; a fixed file applies.
    publish(&nc, "sse.t", "2", None).await.unwrap();
    assert_eq!(stream.next_event(WAIT).await.unwrap().data, "2");
    rewrite(&gw, |text| text.replace("max_connections = 0\n", ""));
    gw.reload();
    wait_metric(&gw, "sse_config_reloads_total", &[("result", "ok")], 1.0).await;
    assert_eq!(
        allowed_origin(&gw, "https://b.example").await.as_deref(),
        Some("https://b.example")
    );
    a_normal_client_still_streams(&gw, "t2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_against_a_running_gateway_tells_live_keys_from_restart_keys() {
    let nats = NatsServer::start().unwrap();
    let gw = ready(&nats, |b| b.set("admin", "token", "\"admin-secret\"")).await;
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new.toml");
    std::fs::write(
        &new,
        text + "[sse]\nretry = \"9s\"\nreplay_window = 99\n"
            + "[cors]\nallowed_origins = [\"https://c.example\"]\n",
    )
    .unwrap();
    let admin = format!("http://{}", gw.admin_addr());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let new_path = new.to_str().unwrap();
    // The token comes from the file checked.
    let (status, out, err) = run(&["--check-config", new_path, "--against", &admin]);
    assert!(status.success(), "{out}{err}");
    let live = out
        .lines()
        .find(|l| l.starts_with("a reload (SIGHUP) applies:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        live.contains("sse.retry") && live.contains("cors.allowed_origins"),
        "{out}"
    );
    let restart = out
        .lines()
        .find(|l| l.starts_with("need a restart"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        restart.contains("sse.replay_window") && !restart.contains("sse.retry"),
        "{out}"
    );
    // The running file against itself: nothing differs.
    let (status, out, _) = run(&[
        "--check-config",
        gw.config_path().to_str().unwrap(),
        "--against",
        &admin,
    ]);
    assert!(
        status.success() && out.contains("the same as the configuration running"),
        "{out}"
    );
    // A wrong token is refused with the API's message.
    let (status, _, err) = run(&[
        "--check-config",
        new_path,
        "--against",
        &admin,
        "--token",
        "wrong",
    ]);
    assert!(!status.success() && err.contains("401"), "{err}");
    a_normal_client_still_streams(&gw, "t").await;
}
