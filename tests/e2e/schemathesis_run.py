"""schemathesis against a running `coffer serve`, with data to reach past the 404s.

    python schemathesis_run.py --url http://127.0.0.1:PORT [--max-examples N] [--seed S]

Seeds a ledger (`fuzz`: transactions 1-6, accounts with metadata) and a wallet with balances and
holds, writes a schemathesis config whose dictionaries make generated path parameters use those
names and ids most of the time, then runs:

    schemathesis --config-file CONFIG run URL/openapi.json \
        --checks not_a_server_error,response_schema_conformance \
        --max-examples N --seed S --no-color --generation-database none

Prints `schemathesis: passed` when it exits 0.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

LEDGER = "fuzz"


def seed(url: str) -> dict:
    with httpx.Client(base_url=url, timeout=30) as http:
        res = http.post(f"/api/ledger/v2/{LEDGER}", json={"metadata": {"purpose": "schemathesis"}})
        assert res.status_code in (204, 400), res.text
        if res.status_code == 400:
            assert res.json()["errorCode"] == "LEDGER_ALREADY_EXISTS", res.text
        tx_ids = []
        for i in range(6):
            res = http.post(
                f"/api/ledger/v2/{LEDGER}/transactions",
                json={
                    "postings": [
                        {"source": "world", "destination": f"users:{i}", "amount": 1000 + i, "asset": "USD/2"}
                    ],
                    "metadata": {"i": str(i)},
                },
            )
            assert res.status_code == 200, res.text
            tx_ids.append(res.json()["data"]["id"])
        res = http.post(f"/api/ledger/v2/{LEDGER}/accounts/users:0/metadata", json={"tier": "gold"})
        assert res.status_code == 204, res.text

        res = http.post("/api/wallets/wallets", json={"name": "fuzz", "metadata": {"k": "v"}})
        assert res.status_code == 201, res.text
        wallet = res.json()["data"]["id"]
        res = http.post(f"/api/wallets/wallets/{wallet}/balances", json={"name": "coupon", "priority": 1})
        assert res.status_code == 201, res.text
        res = http.post(
            f"/api/wallets/wallets/{wallet}/credit",
            json={"amount": {"asset": "USD/2", "amount": 100000}, "metadata": {}},
        )
        assert res.status_code == 204, res.text
        holds = []
        for _ in range(3):
            res = http.post(
                f"/api/wallets/wallets/{wallet}/debit",
                json={"amount": {"asset": "USD/2", "amount": 10}, "pending": True, "metadata": {}},
            )
            assert res.status_code == 201, res.text
            holds.append(res.json()["data"]["id"])
    return {"tx_ids": tx_ids, "wallet": wallet, "holds": holds}


def toml_list(values) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def config(data: dict) -> str:
    return f"""
[dictionaries]
ledgers = {{ values = {toml_list([LEDGER, "wallets"])} }}
transactions = {{ values = {toml_list(data["tx_ids"])} }}
wallets = {{ values = {toml_list([data["wallet"]])} }}
holds = {{ values = {toml_list(data["holds"])} }}
balances = {{ values = {toml_list(["main", "coupon"])} }}
addresses = {{ values = {toml_list(["users:0", "users:1", "world"])} }}

[[operations]]
include-path-regex = "^/api/ledger/"
parameters = {{ "path.ledger" = {{ dictionary = "ledgers", probability = 0.8 }}, "path.id" = {{ dictionary = "transactions", probability = 0.8 }}, "path.address" = {{ dictionary = "addresses", probability = 0.6 }} }}

[[operations]]
include-path-regex = "^/api/wallets/wallets/"
parameters = {{ "path.id" = {{ dictionary = "wallets", probability = 0.8 }}, "path.balanceName" = {{ dictionary = "balances", probability = 0.8 }} }}

[[operations]]
include-path-regex = "^/api/wallets/holds/"
parameters = {{ "path.holdID" = {{ dictionary = "holds", probability = 0.8 }}, "path.hold_id" = {{ dictionary = "holds", probability = 0.8 }} }}
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--max-examples", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    url = args.url.rstrip("/")
    data = seed(url)
    schemathesis = Path(sys.executable).parent / "schemathesis"
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "schemathesis.toml"
        config_file.write_text(config(data))
        command = [
            str(schemathesis),
            "--config-file",
            str(config_file),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            str(args.max_examples),
            "--seed",
            str(args.seed),
            "--no-color",
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
        ]
        print("$ " + " ".join(command), flush=True)
        result = subprocess.run(command, cwd=tmp, env=dict(os.environ, NO_COLOR="1"))
    if result.returncode != 0:
        print(f"schemathesis: failed (exit {result.returncode})")
        return 1
    print("schemathesis: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
