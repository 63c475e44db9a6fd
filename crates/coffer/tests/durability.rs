//! Crash safety and multi-process safety, with the real binary.
//!
//! A `coffer bench` committing under concurrent load is killed with SIGKILL; the store is then
//! reopened: `coffer verify` must pass and every transaction the bench saw acknowledged must be
//! there. On PostgreSQL, two `coffer bench` processes race on the same few accounts.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_ledger::store::Store;
use coffer_ledger::{EngineConfig, LedgerError, Ledgers};

const COFFER: &str = env!("CARGO_BIN_EXE_coffer");

fn bench(store: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(COFFER);
    command
        .args(["bench", "--store", store])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Complete lines only: the last one may have been cut by the kill.
fn acknowledged(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .map(|line| line.parse().expect("ack log holds ids"))
        .collect()
}

fn wait_for_acks(child: &mut Child, path: &Path, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while acknowledged(path).len() < count {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            panic!("bench exited early with {status}: {stderr}");
        }
        assert!(Instant::now() < deadline, "bench made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn verify(store: &str) {
    let stdout = coffer_ok(&["verify", "--store", store]);
    assert!(stdout.contains(", 0 problems"), "{stdout}");
}

fn check_acknowledged_present(store: Arc<dyn Store>, acks: &[u64]) {
    let ledgers = Ledgers::open(store, EngineConfig::default()).unwrap();
    for id in acks {
        match ledgers.get_transaction("bench", *id, None) {
            Ok(tx) => assert_eq!(tx.id, *id),
            Err(LedgerError::NotFound(_)) => {
                panic!("acknowledged transaction {id} is missing after the crash")
            }
            Err(err) => panic!("{err}"),
        }
    }
    ledgers.shutdown();
}

fn crash_rounds(store: &str, open: impl Fn() -> Arc<dyn Store>, dir: &Path) {
    for round in 0..3 {
        let acks = dir.join(format!("acks-{round}.txt"));
        let mut child = bench(
            store,
            &[
                "--accounts",
                "200",
                "--duration-secs",
                "300",
                "--ack-log",
                acks.to_str().unwrap(),
                "--seed",
                &round.to_string(),
            ],
        )
        .spawn()
        .unwrap();
        wait_for_acks(&mut child, &acks, 3000);
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let acks = acknowledged(&acks);
        assert!(acks.len() >= 3000);
        verify(store);
        check_acknowledged_present(open(), &acks);
    }
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_transaction_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coffer.db");
    let url = format!("sqlite://{}", path.display());
    crash_rounds(
        &url,
        || coffer_store_sqlite::SqliteStore::open(&path).unwrap(),
        dir.path(),
    );
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_transaction_postgres() {
    let cluster = coffer_pg_harness::shared();
    let url = cluster.fresh_database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    crash_rounds(
        &url,
        || coffer_store_postgres::PostgresStore::open(&url).unwrap(),
        dir.path(),
    );
}

#[test]
fn two_processes_on_one_postgres_database_never_double_spend() {
    let cluster = coffer_pg_harness::shared();
    let url = cluster.fresh_database().unwrap();
    // Few accounts with little money: the two processes constantly race for the same funds.
    let args = [
        "--accounts",
        "6",
        "--initial-balance",
        "40",
        "--amount",
        "7",
        "--duration-secs",
        "3",
        "--submitters",
        "16",
    ];
    let first = bench(&url, &args).spawn().unwrap();
    let second = bench(&url, &args).spawn().unwrap();
    let mut refused = 0;
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let count = |key: &str| -> u64 {
            stdout
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        refused += count("refused=");
        // The engine's own figures come from its metrics: commits happened, each held requests.
        let commits = count("commits=");
        assert!(
            commits > 0 && commits <= count("transfers=") + count("refused="),
            "{stdout}"
        );
        assert!(count("syncs=") > 0, "{stdout}");
    }
    assert!(refused > 0, "the race never hit the funds check");
    verify(&url);
    let ledgers = Ledgers::open(
        coffer_store_postgres::PostgresStore::open(&url).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let query = coffer_ledger::service::AccountsQuery {
        with_volumes: true,
        ..Default::default()
    };
    let page = ledgers
        .list_accounts(
            "bench",
            query,
            &coffer_ledger::service::PageRequest {
                page_size: Some(100),
                cursor: None,
            },
        )
        .unwrap();
    assert!(page.data.len() >= 7);
    for account in page.data.iter().filter(|a| a.address != "world") {
        let balance = account.volumes["USD"].balance().unwrap();
        assert!(balance >= 0, "{} overdrawn: {balance}", account.address);
    }
    ledgers.shutdown();
}

fn coffer(args: &[&str]) -> std::process::Output {
    Command::new(COFFER).args(args).output().unwrap()
}

/// `coffer ARGS`, which must succeed: its standard output.
fn coffer_ok(args: &[&str]) -> String {
    let output = coffer(args);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "coffer {} failed: {stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `coffer backup` while a bench commits under load, then `coffer restore` into a new store:
/// everything acknowledged before the backup is there, and the restored store verifies. Neither
/// command ever writes over a file.
#[test]
fn a_backup_taken_under_load_restores_every_write_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("coffer.db").display());
    let acks = dir.path().join("acks.txt");
    let mut child = bench(
        &url,
        &[
            "--accounts",
            "200",
            "--duration-secs",
            "300",
            "--ack-log",
            acks.to_str().unwrap(),
        ],
    )
    .spawn()
    .unwrap();
    wait_for_acks(&mut child, &acks, 3000);
    let before = acknowledged(&acks);
    let copy = dir.path().join("backup.db");
    let copy_text = copy.to_str().unwrap();
    let stdout = coffer_ok(&["backup", "--store", &url, "--to", copy_text]);
    assert!(stdout.contains("backed up"), "{stdout}");
    wait_for_acks(&mut child, &acks, before.len() + 2000);
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();

    let again = coffer(&["backup", "--store", &url, "--to", copy_text]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let postgres = coffer(&[
        "backup",
        "--store",
        "postgres://x@localhost/db",
        "--to",
        "/tmp/x",
    ]);
    assert!(String::from_utf8_lossy(&postgres.stderr).contains("pg_dump"));

    let restored_path = dir.path().join("restored/coffer.db");
    let restored = format!("sqlite://{}", restored_path.display());
    let stdout = coffer_ok(&["restore", "--from", copy_text, "--store", &restored]);
    assert!(stdout.contains(", 0 problems"), "{stdout}");
    let again = coffer(&["restore", "--from", copy_text, "--store", &restored]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    verify(&restored);
    check_acknowledged_present(
        coffer_store_sqlite::SqliteStore::open(&restored_path).unwrap(),
        &before,
    );
    // The copy is of one instant: the writes after it are not there, and the store it came
    // from still verifies.
    let last = *acknowledged(&acks).last().unwrap();
    let ledgers = Ledgers::open(
        coffer_store_sqlite::SqliteStore::open(&restored_path).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    assert!(matches!(
        ledgers.get_transaction("bench", last, None),
        Err(LedgerError::NotFound(_))
    ));
    ledgers.shutdown();
    verify(&url);
}
