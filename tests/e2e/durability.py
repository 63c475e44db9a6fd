"""Durability through the HTTP API, driven by crates/coffer/tests/e2e.rs.

    durability.py load  --url URL --ledger NAME --acks FILE [--threads 16] [--max-seconds 60]
    durability.py check --url URL --ledger NAME --acks FILE

`load` posts transactions from many threads, each with a unique Idempotency-Key, and appends one
JSON line per request answered 200 (key, body, id, postings) to FILE, until the server goes away
(the harness SIGKILLs it) or the time runs out. `check`, against the restarted server, finds every
acknowledged transaction with the same postings, then replays every acknowledged request with its
key: each must answer the original transaction with `Idempotency-Hit: true` and the transaction
count must not move.
"""

import argparse
import json
import random
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

ACCOUNTS = 40


def request_body(rng: random.Random, thread: int, n: int) -> dict:
    """World funding most of the time; transfers between users otherwise (may lack funds)."""
    user = f"users:{rng.randrange(ACCOUNTS):03d}"
    if rng.random() < 0.7:
        postings = [
            {"source": "world", "destination": user, "amount": rng.randrange(1, 1000), "asset": "USD/2"}
        ]
    else:
        other = f"users:{rng.randrange(ACCOUNTS):03d}"
        postings = [
            {"source": user, "destination": other, "amount": rng.randrange(1, 50), "asset": "USD/2"},
            {"source": "world", "destination": "fees:collected", "amount": 1, "asset": "USD/2"},
        ]
    return {"postings": postings, "metadata": {"thread": str(thread), "n": str(n)}}


def create_ledger(client: httpx.Client, ledger: str) -> None:
    res = client.post(f"/api/ledger/v2/{ledger}", json={})
    if res.status_code != 204 and res.json().get("errorCode") != "LEDGER_ALREADY_EXISTS":
        raise SystemExit(f"creating ledger {ledger}: {res.status_code} {res.text}")


def load(args) -> int:
    with httpx.Client(base_url=args.url, timeout=30) as client:
        create_ledger(client, args.ledger)
    lock = threading.Lock()
    out = open(args.acks, "a", encoding="utf-8")
    deadline = time.monotonic() + args.max_seconds
    stats = {"acked": 0, "refused": 0, "unavailable": 0, "lost": 0}
    run = uuid.uuid4().hex[:8]

    def worker(thread: int) -> None:
        rng = random.Random(f"{run}-{thread}")
        with httpx.Client(base_url=args.url, timeout=30) as client:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                key = f"dur-{run}-{thread}-{n}"
                body = request_body(rng, thread, n)
                try:
                    res = client.post(
                        f"/api/ledger/v2/{args.ledger}/transactions",
                        json=body,
                        headers={"Idempotency-Key": key},
                    )
                except httpx.HTTPError:
                    # The server is gone (SIGKILL): this request's fate is unknown, so it is
                    # not acknowledged. Stop.
                    with lock:
                        stats["lost"] += 1
                    return
                if res.status_code == 200:
                    tx = res.json()["data"]
                    line = json.dumps(
                        {"key": key, "body": body, "id": tx["id"], "postings": tx["postings"]}
                    )
                    with lock:
                        out.write(line + "\n")
                        out.flush()
                        stats["acked"] += 1
                elif res.status_code == 400 and res.json().get("errorCode") == "INSUFFICIENT_FUND":
                    with lock:
                        stats["refused"] += 1
                elif res.status_code == 503:
                    # Overloaded: not committed, not acknowledged; go on.
                    with lock:
                        stats["unavailable"] += 1
                else:
                    print(f"unexpected answer {res.status_code}: {res.text}", file=sys.stderr)
                    os_exit_code[0] = 1
                    return

    os_exit_code = [0]
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.close()
    print(
        f"load: {stats['acked']} acknowledged, {stats['refused']} refused for funds, "
        f"{stats['unavailable']} answered 503, {stats['lost']} cut by the kill"
    )
    return os_exit_code[0]


def read_acks(path: str) -> list:
    acks = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                acks.append(json.loads(line))
    return acks


def count(client: httpx.Client, ledger: str) -> int:
    res = client.head(f"/api/ledger/v2/{ledger}/transactions")
    assert res.status_code == 204, res.status_code
    return int(res.headers["Count"])


def check(args) -> int:
    acks = read_acks(args.acks)
    if not acks:
        print("check: no acknowledged transaction to check", file=sys.stderr)
        return 1
    ids = [ack["id"] for ack in acks]
    if len(set(ids)) != len(ids):
        print("check: two acknowledged requests got the same transaction id", file=sys.stderr)
        return 1
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=args.url, timeout=30)
        return local.client

    problems = []

    def present(ack) -> None:
        res = client().get(f"/api/ledger/v2/{args.ledger}/transactions/{ack['id']}")
        if res.status_code != 200:
            problems.append(f"acknowledged transaction {ack['id']} is missing: {res.status_code} {res.text}")
            return
        tx = res.json()["data"]
        if tx["postings"] != ack["postings"] or tx["metadata"] != ack["body"]["metadata"]:
            problems.append(f"transaction {ack['id']} differs from what was acknowledged: {tx}")

    def replay(ack) -> None:
        res = client().post(
            f"/api/ledger/v2/{args.ledger}/transactions",
            json=ack["body"],
            headers={"Idempotency-Key": ack["key"]},
        )
        if res.status_code != 200:
            problems.append(f"replay of {ack['key']}: {res.status_code} {res.text}")
            return
        tx = res.json()["data"]
        if res.headers.get("Idempotency-Hit") != "true":
            problems.append(f"replay of {ack['key']} created transaction {tx['id']} (no Idempotency-Hit)")
        elif tx["id"] != ack["id"] or tx["postings"] != ack["postings"]:
            problems.append(f"replay of {ack['key']} answered {tx['id']}, acknowledged {ack['id']}")

    with httpx.Client(base_url=args.url, timeout=30) as c:
        before = count(c, args.ledger)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(present, acks))
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(replay, acks))
    with httpx.Client(base_url=args.url, timeout=30) as c:
        after = count(c, args.ledger)
    if before < len(acks):
        problems.append(f"{before} transactions in the ledger, fewer than the {len(acks)} acknowledged")
    if after != before:
        problems.append(f"replays changed the transaction count from {before} to {after}")
    for problem in problems[:20]:
        print(problem, file=sys.stderr)
    if problems:
        print(f"check: {len(problems)} problems", file=sys.stderr)
        return 1
    print(
        f"check: {len(acks)} acknowledged transactions present; {len(acks)} replays hit; "
        f"count {before} unchanged"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["load", "check"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--acks", required=True)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=60)
    args = parser.parse_args()
    return load(args) if args.mode == "load" else check(args)


if __name__ == "__main__":
    sys.exit(main())
