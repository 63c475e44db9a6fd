//! Starts a throwaway PostgreSQL cluster (durable: fsync on), prints the URL of a fresh
//! database, and keeps the cluster until stdin closes or a line is entered. For benchmarks:
//!
//! ```sh
//! cargo run --release -p coffer-pg-harness --example cluster
//! ```
//!
//! `COFFER_PG_SETTINGS` adds server settings, space-separated `name=value` pairs;
//! `COFFER_PG_SOCKET=1` prints the URL through the cluster's Unix socket instead of TCP.

use std::io::BufRead;

fn main() {
    let cluster = coffer_pg_harness::Cluster::start(coffer_pg_harness::Options {
        durable: true,
        settings: std::env::var("COFFER_PG_SETTINGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    })
    .unwrap_or_else(|err| panic!("{err}"));
    let url = cluster
        .create_database("coffer")
        .unwrap_or_else(|err| panic!("{err}"));
    let url = if std::env::var("COFFER_PG_SOCKET").is_ok_and(|v| v == "1") {
        // The same database, through the socket.
        let name = url.rsplit('/').next().unwrap_or("coffer");
        cluster.socket_url(name)
    } else {
        url
    };
    println!("{url}");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    cluster.stop();
}
