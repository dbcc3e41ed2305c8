//! A load test for `riskgate serve` that stops by itself: a bounded number of track requests from 64 keep-alive
//! connections on loopback, against a bare axum handler that returns a constant and against riskgate's HTTP API,
//! both in this process and measured in the same run. Prints requests per second and p50/p99/p99.9 latency.
//!
//! ```text
//! cargo run --release --features server --example serve_load -- [--requests N] [--connections C] [--rules DIR]
//! cargo run --release --features server --example serve_load -- --url 127.0.0.1:8080 --secret-env RISKGATE_SECRET
//! ```
//!
//! With `--url`, only that server is measured (a `riskgate serve` running elsewhere, with its request logs on).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Args {
    requests: usize,
    connections: usize,
    rules: String,
    url: Option<String>,
    secret: String,
}

fn args() -> Args {
    let mut a = Args {
        requests: 100_000,
        connections: 64,
        rules: "tests/sdk/rules".into(),
        url: None,
        secret: "sk_load_test".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| panic!("`{flag}` needs a value"))
        };
        match flag.as_str() {
            "--requests" => a.requests = value().parse().expect("--requests N"),
            "--connections" => a.connections = value().parse().expect("--connections C"),
            "--rules" => a.rules = value(),
            "--url" => a.url = Some(value()),
            "--secret-env" => a.secret = std::env::var(value()).expect("the secret variable"),
            other => panic!("unknown argument `{other}`"),
        }
    }
    a
}

/// One connection's share of the requests; returns each request's latency in microseconds.
async fn connection(addr: SocketAddr, auth: Arc<str>, first: usize, n: usize) -> Vec<u32> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut stream = BufReader::new(stream);
    let mut lat = Vec::with_capacity(n);
    let mut line = String::new();
    let mut body = Vec::new();
    for i in first..first + n {
        let json = format!(
            r#"{{"idempotencyKey":"load-{i}","ipAddress":"203.0.113.{}","userAgent":"Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0","deviceId":"dev-{}","custom":{{"amount":{}}}}}"#,
            i % 250,
            i % 5000,
            i % 3000
        );
        let req = format!(
            "POST /v1/users/user-{}/actions/signIn HTTP/1.1\r\nHost: riskgate\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            i % 10_000,
            json.len()
        );
        let started = Instant::now();
        stream
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .expect("write");
        line.clear();
        stream.read_line(&mut line).await.expect("status");
        assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
        let mut len = 0;
        loop {
            line.clear();
            stream.read_line(&mut line).await.expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line
                .to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
            {
                len = v.parse().expect("length");
            }
        }
        body.resize(len, 0);
        stream.read_exact(&mut body).await.expect("body");
        lat.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    lat
}

struct Figures {
    rps: f64,
    p50: u32,
    p99: u32,
    p999: u32,
}

async fn measure(addr: SocketAddr, a: &Args) -> Figures {
    let auth: Arc<str> = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:", a.secret))
    )
    .into();
    // A short warm-up on the same connections count, not timed.
    let warm: Vec<_> = (0..a.connections)
        .map(|c| {
            tokio::spawn(connection(
                addr,
                Arc::clone(&auth),
                1_000_000_000 + c * 100,
                50,
            ))
        })
        .collect();
    for w in warm {
        w.await.expect("warm-up");
    }
    let per = a.requests / a.connections;
    let started = Instant::now();
    let tasks: Vec<_> = (0..a.connections)
        .map(|c| tokio::spawn(connection(addr, Arc::clone(&auth), c * per, per)))
        .collect();
    let mut all = Vec::with_capacity(per * a.connections);
    for t in tasks {
        all.extend(t.await.expect("connection"));
    }
    let took = started.elapsed();
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Figures {
        rps: all.len() as f64 / took.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
    }
}

fn print(name: &str, f: &Figures) {
    println!(
        "{name:<28} {:>9.0} req/s   p50 {:>5} µs   p99 {:>5} µs   p99.9 {:>5} µs",
        f.rps, f.p50, f.p99, f.p999
    );
}

async fn bare_server() -> SocketAddr {
    use axum::routing::post;
    let router = axum::Router::new().route(
        "/v1/users/{user_id}/actions/{action}",
        post(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                r#"{"state":"ALLOW","idempotencyKey":"k","isEnrolled":false,"ruleIds":[]}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

async fn riskgate_server(a: &Args) -> SocketAddr {
    use riskgate::server::{App, Secret};
    let engine = riskgate::Engine::builder()
        .rules_dir(&a.rules)
        .unwrap()
        .build()
        .unwrap();
    let settings = engine.ruleset().server_settings().clone();
    let app = App::new(engine, Secret::new(&a.secret).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        riskgate::server::run(listener, app, &settings, std::future::pending()).await
    });
    addr
}

fn main() {
    let a = args();
    // The servers and the client run on separate runtimes (separate threads), so the client's own work is not
    // queued behind the server's on the same workers.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("server")
        .build()
        .unwrap();
    let (bare, risk) = servers.block_on(async { (bare_server().await, riskgate_server(&a).await) });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("client")
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "{} requests over {} connections, {} cores",
            a.requests,
            a.connections,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        if let Some(url) = &a.url {
            let addr = tokio::net::lookup_host(url.trim_start_matches("http://"))
                .await
                .unwrap()
                .next()
                .unwrap();
            print(url, &measure(addr, &a).await);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let b = measure(bare, &a).await;
        print("bare axum (constant)", &b);
        let r = measure(risk, &a).await;
        print(&format!("riskgate serve ({})", a.rules), &r);
        println!("riskgate / bare throughput: {:.0}%", 100.0 * r.rps / b.rps);
    });
}
