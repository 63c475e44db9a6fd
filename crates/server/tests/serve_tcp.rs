//! `serve` over real TCP: the connection limits hold.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use coffer_server::ServeLimits;

const HEALTHCHECK: &[u8] = b"GET /_healthcheck HTTP/1.1\r\nHost: t\r\n\r\n";

/// Sends a healthcheck on `stream` and reads its status line (`None`: no answer in time).
fn status_line(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(HEALTHCHECK).ok()?;
    let mut buffer = [0u8; 512];
    let read = stream.read(&mut buffer).ok()?;
    let text = String::from_utf8_lossy(&buffer[..read]).to_string();
    text.lines().next().map(str::to_string)
}

/// A server on a free port, with `limits`, until the sender is used or dropped.
struct Server {
    address: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(limits: ServeLimits) -> Server {
        let support::Fixture {
            dir,
            state,
            runtime,
        } = support::fixture("wallets", None);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let handle = runtime.spawn(coffer_server::serve_with_limits(
            listener, state, shutdown, limits,
        ));
        Server {
            address,
            stop: Some(stop),
            handle: Some(handle),
            runtime,
            _dir: dir,
        }
    }

    /// Stops the server and checks that it stopped cleanly.
    fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let handle = self.handle.take().unwrap();
        self.runtime.block_on(handle).unwrap().unwrap();
    }
}

#[test]
fn stalled_headers_are_cut_off() {
    let server = Server::start(ServeLimits {
        connections_max: 16,
        header_read_ms_max: 300,
        ..ServeLimits::default()
    });
    // Headers that never end: the connection is closed once the limit has passed.
    let mut stalled = TcpStream::connect(server.address).unwrap();
    stalled
        .write_all(b"GET /_healthcheck HTTP/1.1\r\n")
        .unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    let read = stalled.read(&mut buffer).unwrap_or(0);
    assert_eq!(read, 0, "{:?}", String::from_utf8_lossy(&buffer[..read]));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Whole headers are answered.
    let mut whole = TcpStream::connect(server.address).unwrap();
    let ok = Some("HTTP/1.1 200 OK".to_string());
    assert_eq!(status_line(&mut whole, Duration::from_secs(5)), ok);
    server.stop();
}

#[test]
fn connections_are_capped() {
    let server = Server::start(ServeLimits {
        connections_max: 2,
        header_read_ms_max: 60_000,
        ..ServeLimits::default()
    });
    // Two open connections take both places: a third is answered only when one closes.
    let mut first = TcpStream::connect(server.address).unwrap();
    let mut second = TcpStream::connect(server.address).unwrap();
    let ok = Some("HTTP/1.1 200 OK".to_string());
    assert_eq!(status_line(&mut first, Duration::from_secs(5)), ok);
    assert_eq!(status_line(&mut second, Duration::from_secs(5)), ok);
    let mut third = TcpStream::connect(server.address).unwrap();
    assert_eq!(status_line(&mut third, Duration::from_millis(500)), None);
    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buffer = [0u8; 512];
    let read = third.read(&mut buffer).unwrap();
    let answer = String::from_utf8_lossy(&buffer[..read]).to_string();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
    drop((second, third));
    server.stop();
}

#[test]
fn a_stalled_request_does_not_hold_the_shutdown_up() {
    let server = Server::start(ServeLimits {
        shutdown_wait_ms_max: 300,
        ..ServeLimits::default()
    });
    // A body announced and never sent: its handler waits for it.
    let mut stalled = TcpStream::connect(server.address).unwrap();
    stalled
        .write_all(
            b"POST /api/ledger/v2/l HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    server.stop();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(stalled);
}
