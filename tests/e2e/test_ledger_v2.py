"""Ledger v2 through the official Python SDK (`sdk.ledger.v2.*`) against `coffer serve`."""

import json
import time
from datetime import datetime, timezone

import pytest
from formance_sdk_python.models import ledger as L

from conftest import unique


def header(res, name):
    """A response header, case-insensitively, from an SDK response or error."""
    return res.raw_response.headers.get(name)


def post(sdk, ledger, body, **extra):
    body.setdefault("metadata", {})
    res = sdk.ledger.v2.create_transaction(
        request={"ledger": ledger, "v2_post_transaction": body, **extra}
    )
    assert res.status_code == 200
    return res, res.v2_create_transaction_response.data


def postings(tx):
    return [(p.source, p.destination, p.amount, p.asset) for p in tx.postings]


def fund(sdk, ledger, account, amount, asset="USD/2", **fields):
    _, tx = post(
        sdk,
        ledger,
        {
            "postings": [
                {"source": "world", "destination": account, "amount": amount, "asset": asset}
            ],
            **fields,
        },
    )
    return tx


def balance(sdk, ledger, address, asset="USD/2"):
    res = sdk.ledger.v2.get_account(
        request={"ledger": ledger, "address": address, "expand": "volumes"}
    )
    volumes = res.v2_account_response.data.volumes
    return volumes[asset].balance if asset in volumes else 0


def ledger_error(excinfo):
    return excinfo.value.status_code, excinfo.value.data.error_code.value


def test_server_info(sdk):
    res = sdk.ledger.v2.get_info()
    assert res.status_code == 200
    assert res.v2_config_info.server == "coffer"
    assert res.v2_config_info.version


def test_transaction_from_postings(sdk, ledger):
    _, tx = post(
        sdk,
        ledger,
        {
            "postings": [
                {"source": "world", "destination": "users:001", "amount": 1500, "asset": "USD/2"},
                {"source": "users:001", "destination": "shops:042", "amount": 400, "asset": "USD/2"},
            ],
            "metadata": {"order": "A-1"},
        },
    )
    assert tx.id == 1  # per-ledger ids start at 1
    assert postings(tx) == [
        ("world", "users:001", 1500, "USD/2"),
        ("users:001", "shops:042", 400, "USD/2"),
    ]
    assert tx.metadata == {"order": "A-1"}
    assert tx.reverted is False
    post_volumes = tx.post_commit_volumes
    assert post_volumes["users:001"]["USD/2"].input == 1500
    assert post_volumes["users:001"]["USD/2"].output == 400
    assert post_volumes["users:001"]["USD/2"].balance == 1100
    assert post_volumes["world"]["USD/2"].balance == -1500
    assert tx.pre_commit_volumes["users:001"]["USD/2"].balance == 0

    got = sdk.ledger.v2.get_transaction(request={"ledger": ledger, "id": tx.id})
    assert got.status_code == 200
    assert postings(got.v2_get_transaction_response.data) == postings(tx)
    assert got.v2_get_transaction_response.data.metadata == {"order": "A-1"}

    assert balance(sdk, ledger, "users:001") == 1100
    assert balance(sdk, ledger, "shops:042") == 400

    second = fund(sdk, ledger, "users:002", 1)
    assert second.id == 2

    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        sdk.ledger.v2.get_transaction(request={"ledger": ledger, "id": 999})
    assert ledger_error(excinfo) == (404, "NOT_FOUND")


def test_transaction_from_numscript(sdk, ledger):
    fund(sdk, ledger, "users:alice", 10000, asset="EUR/2")
    script = """
vars {
  account $user
  monetary $price
}
send $price (
  source = $user
  destination = {
    10% to @platform:fees
    remaining to @shops:1
  }
)
set_tx_meta("kind", "purchase")
"""
    _, tx = post(
        sdk,
        ledger,
        {
            "script": {
                "plain": script,
                "vars": {"user": "users:alice", "price": "EUR/2 2500"},
            },
            "reference": "purchase-1",
        },
    )
    assert sorted(postings(tx)) == sorted(
        [
            ("users:alice", "platform:fees", 250, "EUR/2"),
            ("users:alice", "shops:1", 2250, "EUR/2"),
        ]
    )
    assert tx.metadata["kind"] == "purchase"
    assert tx.reference == "purchase-1"
    assert balance(sdk, ledger, "users:alice", "EUR/2") == 7500
    assert balance(sdk, ledger, "platform:fees", "EUR/2") == 250
    assert balance(sdk, ledger, "shops:1", "EUR/2") == 2250

    # Numscript errors are typed.
    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        sdk.ledger.v2.create_transaction(
            request={
                "ledger": ledger,
                "v2_post_transaction": {"script": {"plain": "send [EUR/2 1] (", "vars": {}}, "metadata": {}},
            }
        )
    assert ledger_error(excinfo) == (400, "INTERPRETER_PARSE")


def test_insufficient_funds(sdk, ledger):
    fund(sdk, ledger, "users:poor", 100)
    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        post(
            sdk,
            ledger,
            {"postings": [{"source": "users:poor", "destination": "shops:1", "amount": 101, "asset": "USD/2"}]},
        )
    assert ledger_error(excinfo) == (400, "INSUFFICIENT_FUND")
    # Nothing moved, and the ledger still only has the funding transaction.
    assert balance(sdk, ledger, "users:poor") == 100
    count = sdk.ledger.v2.count_transactions(request={"ledger": ledger, "request_body": {}})
    assert header(count, "Count") == "1"
    # Same with a script, and `force` lets the postings overdraft.
    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        post(
            sdk,
            ledger,
            {"script": {"plain": "send [USD/2 500] (source = @users:poor destination = @shops:1)", "vars": {}}},
        )
    assert ledger_error(excinfo) == (400, "INSUFFICIENT_FUND")
    _, tx = post(
        sdk,
        ledger,
        {"postings": [{"source": "users:poor", "destination": "shops:1", "amount": 150, "asset": "USD/2"}]},
        force=True,
    )
    assert tx.post_commit_volumes["users:poor"]["USD/2"].balance == -50


def test_idempotency_hit_and_conflicting_reuse(sdk, ledger):
    body = {
        "postings": [{"source": "world", "destination": "users:idem", "amount": 700, "asset": "USD/2"}],
        "metadata": {"try": "1"},
    }
    key = unique("ik")
    first, tx = post(sdk, ledger, dict(body), idempotency_key=key)
    assert header(first, "Idempotency-Hit") is None
    again, replay = post(sdk, ledger, dict(body), idempotency_key=key)
    assert header(again, "Idempotency-Hit") == "true"
    assert "true" in [v for k, vs in again.headers.items() if k.lower() == "idempotency-hit" for v in vs]
    assert replay.id == tx.id
    assert postings(replay) == postings(tx)
    assert balance(sdk, ledger, "users:idem") == 700  # applied once

    # The same key with another body is refused.
    other = dict(body, metadata={"try": "2"})
    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        post(sdk, ledger, other, idempotency_key=key)
    assert ledger_error(excinfo) == (400, "VALIDATION")
    count = sdk.ledger.v2.count_transactions(request={"ledger": ledger, "request_body": {}})
    assert header(count, "Count") == "1"

    # Idempotency also covers metadata writes.
    for expect_hit in (None, "true"):
        res = sdk.ledger.v2.add_metadata_to_account(
            request={
                "ledger": ledger,
                "address": "users:idem",
                "request_body": {"tier": "gold"},
                "idempotency_key": key + "-meta",
            }
        )
        assert res.status_code == 204
        assert header(res, "Idempotency-Hit") == expect_hit


def test_duplicate_reference(sdk, ledger):
    fund(sdk, ledger, "users:ref", 10, reference="invoice-7")
    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        fund(sdk, ledger, "users:ref", 10, reference="invoice-7")
    assert ledger_error(excinfo) == (409, "CONFLICT")
    assert balance(sdk, ledger, "users:ref") == 10


def test_list_transactions_with_filters_and_cursors(sdk, ledger):
    ids = []
    for i in range(7):
        tx = fund(sdk, ledger, f"users:{i % 2}", 100 + i, metadata={"batch": "b1" if i < 5 else "b2"})
        ids.append(tx.id)

    # Pages of 3, newest first, followed with the `next` cursor (the SDK still sends a body {}).
    seen = []
    res = sdk.ledger.v2.list_transactions(
        request={"ledger": ledger, "page_size": 3, "request_body": {}}
    )
    pages = 0
    while True:
        cursor = res.v2_transactions_cursor_response.cursor
        assert cursor.page_size == 3
        assert len(cursor.data) <= 3
        seen.extend(tx.id for tx in cursor.data)
        pages += 1
        if not cursor.has_more:
            assert cursor.next is None
            break
        assert cursor.next
        res = sdk.ledger.v2.list_transactions(
            request={"ledger": ledger, "cursor": cursor.next, "request_body": {}}
        )
    assert pages == 3
    assert seen == sorted(ids, reverse=True)

    # And back with `previous`.
    assert cursor.previous
    back = sdk.ledger.v2.list_transactions(
        request={"ledger": ledger, "cursor": cursor.previous, "request_body": {}}
    )
    assert [tx.id for tx in back.v2_transactions_cursor_response.cursor.data] == seen[3:6]

    # Filters in the body (as the Python SDK sends them).
    res = sdk.ledger.v2.list_transactions(
        request={"ledger": ledger, "request_body": {"$match": {"metadata[batch]": "b2"}}}
    )
    assert [tx.id for tx in res.v2_transactions_cursor_response.cursor.data] == [ids[6], ids[5]]
    res = sdk.ledger.v2.list_transactions(
        request={
            "ledger": ledger,
            "request_body": {
                "$and": [{"$match": {"destination": "users:1"}}, {"$gte": {"id": ids[3]}}]
            },
        }
    )
    assert [tx.id for tx in res.v2_transactions_cursor_response.cursor.data] == [ids[5], ids[3]]

    # Ascending order, and volumes on request.
    res = sdk.ledger.v2.list_transactions(
        request={"ledger": ledger, "sort": "id:asc", "page_size": 2, "expand": "volumes", "request_body": {}}
    )
    data = res.v2_transactions_cursor_response.cursor.data
    assert [tx.id for tx in data] == ids[:2]
    assert data[0].post_commit_volumes["users:0"]["USD/2"].balance == 100

    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        sdk.ledger.v2.list_transactions(
            request={"ledger": ledger, "request_body": {"$nope": {"id": 1}}}
        )
    assert ledger_error(excinfo) == (400, "VALIDATION")


def test_accounts_with_volumes(sdk, ledger):
    fund(sdk, ledger, "users:a:main", 300)
    fund(sdk, ledger, "users:b:main", 200)
    fund(sdk, ledger, "users:b:main", 50, asset="EUR")
    post(
        sdk,
        ledger,
        {"postings": [{"source": "users:a:main", "destination": "users:b:main", "amount": 120, "asset": "USD/2"}]},
    )
    res = sdk.ledger.v2.get_account(
        request={"ledger": ledger, "address": "users:b:main", "expand": "volumes"}
    )
    account = res.v2_account_response.data
    assert account.address == "users:b:main"
    assert account.volumes["USD/2"].input == 320
    assert account.volumes["USD/2"].output == 0
    assert account.volumes["USD/2"].balance == 320
    assert account.volumes["EUR"].balance == 50
    assert account.first_usage is not None

    res = sdk.ledger.v2.list_accounts(
        request={
            "ledger": ledger,
            "expand": "volumes",
            "request_body": {"$match": {"address": "users::main"}},
        }
    )
    accounts = res.v2_accounts_cursor_response.cursor.data
    assert [a.address for a in accounts] == ["users:a:main", "users:b:main"]
    assert accounts[0].volumes["USD/2"].balance == 180
    assert accounts[0].volumes["USD/2"].output == 120

    # Every account, address ascending, paginated.
    res = sdk.ledger.v2.list_accounts(request={"ledger": ledger, "page_size": 2, "request_body": {}})
    cursor = res.v2_accounts_cursor_response.cursor
    assert [a.address for a in cursor.data] == ["users:a:main", "users:b:main"]
    assert cursor.has_more
    res = sdk.ledger.v2.list_accounts(request={"ledger": ledger, "cursor": cursor.next, "request_body": {}})
    assert [a.address for a in res.v2_accounts_cursor_response.cursor.data] == ["world"]

    # Filter on a balance.
    res = sdk.ledger.v2.list_accounts(
        request={"ledger": ledger, "request_body": {"$gte": {"balance[USD/2]": 200}}}
    )
    assert [a.address for a in res.v2_accounts_cursor_response.cursor.data] == ["users:b:main"]

    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        sdk.ledger.v2.get_account(request={"ledger": ledger, "address": "nobody:here"})
    assert ledger_error(excinfo) == (404, "NOT_FOUND")


def test_aggregated_balances(sdk, ledger):
    fund(sdk, ledger, "users:1", 100)
    fund(sdk, ledger, "users:2", 250)
    fund(sdk, ledger, "users:2", 7, asset="EUR")
    fund(sdk, ledger, "shops:1", 1000)
    res = sdk.ledger.v2.get_balances_aggregated(
        request={"ledger": ledger, "request_body": {"$match": {"address": "users:"}}}
    )
    assert res.status_code == 200
    assert res.v2_aggregate_balances_response.data == {"USD/2": 350, "EUR": 7}
    res = sdk.ledger.v2.get_balances_aggregated(request={"ledger": ledger, "request_body": {}})
    # Everything sums to zero in double-entry.
    assert res.v2_aggregate_balances_response.data == {"USD/2": 0, "EUR": 0}


def test_metadata_add_and_delete(sdk, ledger):
    tx = fund(sdk, ledger, "users:meta", 10)
    # Account metadata (the account need not exist yet).
    res = sdk.ledger.v2.add_metadata_to_account(
        request={"ledger": ledger, "address": "users:new", "request_body": {"a": "1", "b": "2"}}
    )
    assert res.status_code == 204
    account = sdk.ledger.v2.get_account(request={"ledger": ledger, "address": "users:new"})
    assert account.v2_account_response.data.metadata == {"a": "1", "b": "2"}
    res = sdk.ledger.v2.delete_account_metadata(
        request={"ledger": ledger, "address": "users:new", "key": "a"}
    )
    assert res.status_code == 204
    account = sdk.ledger.v2.get_account(request={"ledger": ledger, "address": "users:new"})
    assert account.v2_account_response.data.metadata == {"b": "2"}

    # Transaction metadata.
    res = sdk.ledger.v2.add_metadata_on_transaction(
        request={"ledger": ledger, "id": tx.id, "request_body": {"status": "settled", "x": "y"}}
    )
    assert res.status_code == 204
    got = sdk.ledger.v2.get_transaction(request={"ledger": ledger, "id": tx.id})
    assert got.v2_get_transaction_response.data.metadata == {"status": "settled", "x": "y"}
    res = sdk.ledger.v2.delete_transaction_metadata(
        request={"ledger": ledger, "id": tx.id, "key": "x"}
    )
    assert res.status_code == 204
    got = sdk.ledger.v2.get_transaction(request={"ledger": ledger, "id": tx.id})
    assert got.v2_get_transaction_response.data.metadata == {"status": "settled"}

    # Listing by the new metadata finds it.
    res = sdk.ledger.v2.list_transactions(
        request={"ledger": ledger, "request_body": {"$match": {"metadata[status]": "settled"}}}
    )
    assert [t.id for t in res.v2_transactions_cursor_response.cursor.data] == [tx.id]

    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        sdk.ledger.v2.add_metadata_on_transaction(
            request={"ledger": ledger, "id": 424242, "request_body": {"k": "v"}}
        )
    assert ledger_error(excinfo) == (404, "NOT_FOUND")


def test_revert(sdk, ledger):
    fund(sdk, ledger, "users:r", 1000)
    _, tx = post(
        sdk,
        ledger,
        {"postings": [{"source": "users:r", "destination": "shops:r", "amount": 300, "asset": "USD/2"}]},
    )
    res = sdk.ledger.v2.revert_transaction(
        request={"ledger": ledger, "id": tx.id, "v2_revert_transaction_request": {"metadata": {"why": "refund"}}}
    )
    assert res.status_code == 201
    reverse = res.v2_create_transaction_response.data
    assert reverse.id == tx.id + 1
    assert postings(reverse) == [("shops:r", "users:r", 300, "USD/2")]
    assert reverse.metadata.get("why") == "refund"
    original = sdk.ledger.v2.get_transaction(request={"ledger": ledger, "id": tx.id})
    original = original.v2_get_transaction_response.data
    assert original.reverted is True
    assert original.reverted_at is not None
    assert balance(sdk, ledger, "users:r") == 1000
    assert balance(sdk, ledger, "shops:r") == 0

    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        sdk.ledger.v2.revert_transaction(request={"ledger": ledger, "id": tx.id})
    assert ledger_error(excinfo) == (400, "ALREADY_REVERT")

    # Reverting needs the funds back unless forced.
    _, spent = post(
        sdk,
        ledger,
        {"postings": [{"source": "users:r", "destination": "shops:s", "amount": 100, "asset": "USD/2"}]},
    )
    post(
        sdk,
        ledger,
        {"postings": [{"source": "shops:s", "destination": "banks:1", "amount": 100, "asset": "USD/2"}]},
    )
    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        sdk.ledger.v2.revert_transaction(request={"ledger": ledger, "id": spent.id})
    assert ledger_error(excinfo) == (400, "INSUFFICIENT_FUND")
    res = sdk.ledger.v2.revert_transaction(request={"ledger": ledger, "id": spent.id, "force": True})
    assert res.status_code == 201
    assert balance(sdk, ledger, "shops:s") == -100


def test_counts(sdk, ledger, http):
    for i in range(5):
        fund(sdk, ledger, f"users:{i}", 10, metadata={"even": str(i % 2 == 0).lower()})
    res = sdk.ledger.v2.count_transactions(request={"ledger": ledger, "request_body": {}})
    assert res.status_code == 204
    assert header(res, "Count") == "5"
    assert res.headers.get("count") == ["5"] or res.headers.get("Count") == ["5"]
    res = sdk.ledger.v2.count_transactions(
        request={"ledger": ledger, "request_body": {"$match": {"metadata[even]": "true"}}}
    )
    assert header(res, "Count") == "3"
    res = sdk.ledger.v2.count_accounts(request={"ledger": ledger, "request_body": {}})
    assert header(res, "Count") == "6"  # five users and world
    res = sdk.ledger.v2.count_accounts(
        request={"ledger": ledger, "request_body": {"$match": {"address": "users:"}}}
    )
    assert header(res, "Count") == "5"
    # The same count with the filter in ?query= (as the TypeScript and Go SDKs send it).
    raw = http.head(
        f"/api/ledger/v2/{ledger}/accounts",
        params={"query": json.dumps({"$match": {"address": "users:"}})},
    )
    assert raw.status_code == 204
    assert raw.headers["Count"] == "5"


def test_logs(sdk, ledger):
    tx = fund(sdk, ledger, "users:log", 10)
    sdk.ledger.v2.add_metadata_on_transaction(
        request={"ledger": ledger, "id": tx.id, "request_body": {"k": "v"}}
    )
    sdk.ledger.v2.revert_transaction(request={"ledger": ledger, "id": tx.id})
    sdk.ledger.v2.delete_transaction_metadata(request={"ledger": ledger, "id": tx.id, "key": "k"})
    res = sdk.ledger.v2.list_logs(request={"ledger": ledger, "request_body": {}})
    assert res.status_code == 200
    logs = res.v2_logs_cursor_response.cursor.data
    assert [log.type.value for log in logs] == [
        "DELETE_METADATA",
        "REVERTED_TRANSACTION",
        "SET_METADATA",
        "NEW_TRANSACTION",
    ]
    assert [log.id for log in logs] == sorted((log.id for log in logs), reverse=True)
    assert all(log.hash for log in logs)
    assert len({log.hash for log in logs}) == 4
    created, set_meta, reverted, deleted = logs[3], logs[2], logs[1], logs[0]
    assert created.data.transaction.id == tx.id
    assert created.data.transaction.postings[0].destination == "users:log"
    assert set_meta.data.target_type.value == "TRANSACTION"
    assert set_meta.data.target_id == tx.id
    assert set_meta.data.metadata == {"k": "v"}
    assert reverted.data.reverted_transaction.id == tx.id
    assert reverted.data.transaction.id == tx.id + 1
    assert reverted.data.transaction.postings[0].source == "users:log"
    assert deleted.data.key == "k"

    # Paginated ascending.
    res = sdk.ledger.v2.list_logs(
        request={"ledger": ledger, "page_size": 3, "sort": "id:asc", "request_body": {}}
    )
    cursor = res.v2_logs_cursor_response.cursor
    assert [log.type.value for log in cursor.data] == ["NEW_TRANSACTION", "SET_METADATA", "REVERTED_TRANSACTION"]
    assert cursor.has_more
    res = sdk.ledger.v2.list_logs(request={"ledger": ledger, "cursor": cursor.next, "request_body": {}})
    assert [log.type.value for log in res.v2_logs_cursor_response.cursor.data] == ["DELETE_METADATA"]


def test_ledgers(sdk):
    name = unique("e2e-ledger")
    sdk.ledger.v2.create_ledger(
        request={"ledger": name, "v2_create_ledger_request": {"metadata": {"team": "e2e"}}}
    )
    res = sdk.ledger.v2.get_ledger(request={"ledger": name})
    assert res.v2_get_ledger_response.data.name == name
    assert res.v2_get_ledger_response.data.metadata == {"team": "e2e"}
    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        sdk.ledger.v2.create_ledger(request={"ledger": name, "v2_create_ledger_request": {}})
    assert ledger_error(excinfo) == (400, "LEDGER_ALREADY_EXISTS")
    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        sdk.ledger.v2.list_transactions(request={"ledger": unique("missing"), "request_body": {}})
    assert ledger_error(excinfo) == (404, "LEDGER_NOT_FOUND")
    res = sdk.ledger.v2.list_ledgers(request={"page_size": 100, "request_body": {}})
    assert res.status_code == 200
    stats = sdk.ledger.v2.read_stats(request={"ledger": name})
    assert stats.v2_stats_response.data.transactions == 0


def test_bulk(sdk, ledger):
    res = sdk.ledger.v2.create_bulk(
        request={
            "ledger": ledger,
            "request_body": [
                {
                    "action": "CREATE_TRANSACTION",
                    "data": {
                        "postings": [{"source": "world", "destination": "users:bulk", "amount": 90, "asset": "USD"}],
                        "metadata": {},
                    },
                },
                {
                    "action": "ADD_METADATA",
                    "data": {"targetType": "ACCOUNT", "targetId": "users:bulk", "metadata": {"k": "v"}},
                },
            ],
        }
    )
    assert res.status_code == 200
    results = res.v2_bulk_response.data
    assert [r.response_type for r in results] == ["CREATE_TRANSACTION", "ADD_METADATA"]
    assert results[0].data.postings[0].amount == 90
    assert balance(sdk, ledger, "users:bulk", "USD") == 90
    account = sdk.ledger.v2.get_account(request={"ledger": ledger, "address": "users:bulk"})
    assert account.v2_account_response.data.metadata == {"k": "v"}

    # A failed element: 400 with the per-element results.
    res = sdk.ledger.v2.create_bulk(
        request={
            "ledger": ledger,
            "request_body": [
                {
                    "action": "CREATE_TRANSACTION",
                    "data": {
                        "postings": [{"source": "users:bulk", "destination": "shops:1", "amount": 91, "asset": "USD"}],
                        "metadata": {},
                    },
                }
            ],
        }
    )
    assert res.status_code == 400
    (failed,) = res.v2_bulk_response.data
    assert failed.response_type == "ERROR"
    assert failed.error_code == "INSUFFICIENT_FUND"


def test_volumes_stats_and_ledger_info(sdk, ledger):
    fund(sdk, ledger, "users:v1", 40)
    fund(sdk, ledger, "users:v2", 2)
    res = sdk.ledger.v2.get_volumes_with_balances(
        request={"ledger": ledger, "request_body": {"$match": {"account": "users:"}}}
    )
    rows = res.v2_volumes_with_balance_cursor_response.cursor.data
    assert [(r.account, r.asset, r.input, r.output, r.balance) for r in rows] == [
        ("users:v1", "USD/2", 40, 0, 40),
        ("users:v2", "USD/2", 2, 0, 2),
    ]
    res = sdk.ledger.v2.get_volumes_with_balances(
        request={"ledger": ledger, "group_by": 1, "request_body": {}}
    )
    rows = res.v2_volumes_with_balance_cursor_response.cursor.data
    assert [(r.account, r.asset, r.input, r.output, r.balance) for r in rows] == [
        ("users", "USD/2", 42, 0, 42),
        ("world", "USD/2", 0, 42, -42),
    ]
    stats = sdk.ledger.v2.read_stats(request={"ledger": ledger}).v2_stats_response.data
    assert (stats.transactions, stats.accounts) == (2, 3)
    info = sdk.ledger.v2.get_ledger_info(request={"ledger": ledger})
    assert info.v2_ledger_info_response.data.name == ledger
    assert info.v2_ledger_info_response.data.storage.migrations
    metrics = sdk.ledger.v2.get_metrics()
    assert metrics.status_code == 200


def bulk_transfer(source, destination, amount, ik=None):
    """A `_bulk` element creating one USD transaction."""
    element = {
        "action": "CREATE_TRANSACTION",
        "data": {
            "postings": [{"source": source, "destination": destination, "amount": amount, "asset": "USD"}],
            "metadata": {},
        },
    }
    if ik:
        element["ik"] = ik
    return element


def atomic_bulk(sdk, ledger, elements):
    return sdk.ledger.v2.create_bulk(request={"ledger": ledger, "atomic": True, "request_body": elements})


def test_bulk_refused_as_a_whole(sdk, ledger):
    # A refused bulk answers 400 with an error body, which the SDK's V2BulkResponse also holds.
    element = bulk_transfer("world", "users:b", 1)
    res = sdk.ledger.v2.create_bulk(request={"ledger": ledger, "request_body": [element] * 1001})
    assert res.status_code == 400
    assert res.v2_bulk_response.error_code.value == "VALIDATION"
    count = sdk.ledger.v2.count_transactions(request={"ledger": ledger, "request_body": {}})
    assert header(count, "Count") == "0"


def test_atomic_bulk(sdk, ledger):
    # All or nothing: the third element overdraws, so the first two are rolled back.
    overdrawing = [
        bulk_transfer("world", "users:at", 10, ik="at-1"),
        bulk_transfer("users:at", "shops:at", 4),
        bulk_transfer("users:at", "shops:at", 7),
        bulk_transfer("world", "users:never", 1),
    ]
    res = atomic_bulk(sdk, ledger, overdrawing)
    assert res.status_code == 400
    results = res.v2_bulk_response.data
    assert [r.response_type for r in results] == ["CREATE_TRANSACTION", "CREATE_TRANSACTION", "ERROR"]
    assert results[2].error_code == "INSUFFICIENT_FUND"
    count = sdk.ledger.v2.count_transactions(request={"ledger": ledger, "request_body": {}})
    assert header(count, "Count") == "0"
    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        sdk.ledger.v2.get_account(request={"ledger": ledger, "address": "users:at"})
    assert ledger_error(excinfo) == (404, "NOT_FOUND")

    # The same group without the overdraft commits as a whole; later elements see earlier ones,
    # and the idempotency key of the rolled-back attempt was not kept.
    funded = [
        bulk_transfer("world", "users:at", 10, ik="at-1"),
        bulk_transfer("users:at", "shops:at", 4),
        bulk_transfer("users:at", "shops:at", 6),
    ]
    res = atomic_bulk(sdk, ledger, funded)
    assert res.status_code == 200
    results = res.v2_bulk_response.data
    assert [r.data.id for r in results] == [1, 2, 3]
    assert balance(sdk, ledger, "users:at", "USD") == 0
    assert balance(sdk, ledger, "shops:at", "USD") == 10


def test_nul_characters_are_refused(sdk, ledger, http):
    # PostgreSQL cannot store U+0000: refused up front, on every store, as a 400 naming the field.
    with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
        fund(sdk, ledger, "users:nul", 1, metadata={"note": "a\x00b"})
    assert ledger_error(excinfo) == (400, "VALIDATION")
    assert ".metadata.note" in excinfo.value.data.error_message
    res = http.get(
        f"/api/ledger/v2/{ledger}/transactions",
        params={"query": json.dumps({"$match": {"reference": "x\x00"}})},
    )
    assert (res.status_code, res.json()["errorCode"]) == (400, "VALIDATION")
    res = http.delete(f"/api/ledger/v2/{ledger}/accounts/users:nul/metadata/k%00")
    assert res.status_code == 400
    res = http.get("/api/wallets/wallets", params={"name": "a\x00"})
    assert (res.status_code, res.json()["errorCode"]) == (400, "VALIDATION")
    # Nothing was written, and the ledger still works.
    count = sdk.ledger.v2.count_transactions(request={"ledger": ledger, "request_body": {}})
    assert header(count, "Count") == "0"
    assert fund(sdk, ledger, "users:nul", 1).id == 1


def test_logs_filtered_by_type_id_and_date(sdk, ledger, http):
    tx = fund(sdk, ledger, "users:lf", 10)
    sdk.ledger.v2.add_metadata_on_transaction(
        request={"ledger": ledger, "id": tx.id, "request_body": {"k": "v"}}
    )
    fund(sdk, ledger, "users:lf", 5)
    url = f"/api/ledger/v2/{ledger}/logs"

    def types(query):
        res = http.get(url, params={"query": json.dumps(query)})
        assert res.status_code == 200, res.text
        return [log["type"] for log in res.json()["cursor"]["data"]]

    assert types({"$match": {"type": "NEW_TRANSACTION"}}) == ["NEW_TRANSACTION"] * 2
    assert types({"$match": {"type": "SET_METADATA"}}) == ["SET_METADATA"]
    assert types({"$lte": {"id": 1}}) == ["NEW_TRANSACTION"]
    assert types({"$gte": {"date": "2000-01-01T00:00:00Z"}}) == [
        "NEW_TRANSACTION",
        "SET_METADATA",
        "NEW_TRANSACTION",
    ]
    res = http.get(url, params={"query": json.dumps({"$match": {"metadata[k]": "v"}})})
    assert (res.status_code, res.json()["errorCode"]) == (400, "VALIDATION")


def test_transactions_in_effective_order_page_to_the_end(sdk, ledger):
    # Timestamps out of id order, so that the effective order differs from the ids'.
    for day in [5, 1, 4, 2, 3]:
        fund(sdk, ledger, "users:eo", day, timestamp=f"2024-01-0{day}T00:00:00Z")
    seen = []
    res = sdk.ledger.v2.list_transactions(
        request={"ledger": ledger, "page_size": 2, "order": "effective", "request_body": {}}
    )
    while True:
        cursor = res.v2_transactions_cursor_response.cursor
        seen += [tx.postings[0].amount for tx in cursor.data]
        if not cursor.has_more:
            break
        # As the SDKs do: the cursor alone.
        res = sdk.ledger.v2.list_transactions(
            request={"ledger": ledger, "cursor": cursor.next, "request_body": {}}
        )
    assert seen == [5, 4, 3, 2, 1]


def test_bulk_metadata_targets_what_target_type_names(sdk, ledger, http):
    tx = fund(sdk, ledger, "users:bt", 1)
    url = f"/api/ledger/v2/{ledger}/_bulk"

    def add(target_type, target_id):
        element = {
            "action": "ADD_METADATA",
            "data": {"targetType": target_type, "targetId": target_id, "metadata": {"k": "v"}},
        }
        return http.post(url, json=[element])

    assert add("TRANSACTION", tx.id).status_code == 200
    got = sdk.ledger.v2.get_transaction(request={"ledger": ledger, "id": tx.id})
    assert got.v2_get_transaction_response.data.metadata == {"k": "v"}
    assert add("ACCOUNT", "users:bt").status_code == 200
    for target_type, target_id in [("ACCOUNT", tx.id), ("TRANSACTION", str(tx.id)), ("BOGUS", 1), (None, 1)]:
        res = add(target_type, target_id)
        assert res.status_code == 400, (target_type, target_id, res.text)
        assert res.json()["data"][0]["errorCode"] == "VALIDATION"
    # Nothing landed on an account named after the id.
    res = http.get(f"/api/ledger/v2/{ledger}/accounts/{tx.id}")
    assert res.status_code == 404


def test_an_unknown_ledger_is_not_found(http):
    res = http.get(f"/api/ledger/v2/{unique('missing')}")
    assert (res.status_code, res.json()["errorCode"]) == (404, "NOT_FOUND")


def test_bulk_on_an_unknown_ledger_is_not_found(sdk):
    # The whole request is a typed 404, whatever its elements (none, plain or atomic), as Formance.
    missing = unique("nobulk")
    metadata = {"action": "ADD_METADATA", "data": {"target_type": "ACCOUNT", "target_id": "a", "metadata": {"k": "v"}}}
    for elements, atomic in (([], None), ([metadata], None), ([metadata], True)):
        request = {"ledger": missing, "request_body": elements}
        if atomic:
            request["atomic"] = True
        with pytest.raises(L.ErrorsV2ErrorResponse) as excinfo:
            sdk.ledger.v2.create_bulk(request=request)
        assert ledger_error(excinfo) == (404, "LEDGER_NOT_FOUND"), (elements, atomic)
    # Nothing made the ledger on the way.
    with pytest.raises(L.ErrorsV2ErrorResponse):
        sdk.ledger.v2.get_ledger(request={"ledger": missing})


def test_atomic_bulk_refuses_parallel(sdk, ledger, http):
    res = http.post(
        f"/api/ledger/v2/{ledger}/_bulk",
        params={"atomic": "true", "parallel": "true"},
        json=[bulk_transfer("world", "users:par", 1)],
    )
    assert (res.status_code, res.json()["errorCode"]) == (412, "VALIDATION")
    count = sdk.ledger.v2.count_transactions(request={"ledger": ledger, "request_body": {}})
    assert header(count, "Count") == "0"


def test_ledgers_sorted_by_id_and_name_both_ways(sdk, http):
    prefix = unique("sorted")
    names = [f"{prefix}-{suffix}" for suffix in ["b", "c", "a"]]
    for name in names:
        sdk.ledger.v2.create_ledger(request={"ledger": name, "v2_create_ledger_request": {}})

    def listed(sort):
        out, cursor = [], None
        while True:
            # Pages of two through every ledger of the server; ours are picked out.
            params = {"cursor": cursor} if cursor else {"sort": sort, "pageSize": 2}
            res = http.get("/api/ledger/v2", params=params)
            assert res.status_code == 200, res.text
            page = res.json()["cursor"]
            out += [l["name"] for l in page["data"] if l["name"].startswith(prefix)]
            if not page["hasMore"]:
                return out
            cursor = page["next"]

    assert listed("id:asc") == names
    assert listed("id:desc") == names[::-1]
    assert listed("name:desc") == sorted(names, reverse=True)
    assert listed("name:asc") == sorted(names)


def test_reads_by_insertion_date(sdk, ledger, http):
    # Written now, dated in 2025: in effect then, inserted only now.
    fund(sdk, ledger, "users:ins", 40, timestamp="2025-01-01T00:00:00Z")
    then = "2025-06-01T00:00:00Z"
    base = f"/api/ledger/v2/{ledger}"

    def aggregate(**params):
        res = http.get(f"{base}/aggregate/balances", params={"pit": then, **params})
        assert res.status_code == 200, res.text
        return res.json()["data"].get("USD/2")

    assert aggregate() == 0  # world -40 and users:ins +40
    by_date = http.get(
        f"{base}/aggregate/balances", params={"pit": then, "query": '{"$match":{"address":"users:"}}'}
    ).json()["data"]
    assert by_date == {"USD/2": 40}
    by_insertion = http.get(
        f"{base}/aggregate/balances",
        params={"pit": then, "useInsertionDate": "true", "query": '{"$match":{"address":"users:"}}'},
    ).json()["data"]
    assert by_insertion == {}

    def window(**params):
        res = http.get(f"{base}/volumes", params={"endTime": then, **params})
        assert res.status_code == 200, res.text
        return {(r["account"], r["balance"]) for r in res.json()["cursor"]["data"]}

    assert window() == {("users:ins", 40), ("world", -40)}
    assert window(insertionDate="true") == set()

    res = sdk.ledger.v2.get_account(
        request={
            "ledger": ledger,
            "address": "users:ins",
            "expand": "volumes,effectiveVolumes",
            "pit": datetime(2025, 6, 1, tzinfo=timezone.utc),
        }
    )
    account = res.v2_account_response.data
    assert account.effective_volumes["USD/2"].balance == 40
    assert account.volumes == {}


def test_a_script_scales_between_precisions_of_an_asset(sdk, ledger):
    fund(sdk, ledger, "users:scaled", 99, asset="EUR")
    fund(sdk, ledger, "users:scaled", 1, asset="EUR/2")
    script = """#![feature("experimental-asset-scaling")]
send [EUR/2 400] (
  source = @users:scaled with scaling through @swap
  destination = @shops:1
)
"""
    _, tx = post(sdk, ledger, {"script": {"plain": script, "vars": {}}})
    assert postings(tx) == [
        ("users:scaled", "swap", 4, "EUR"),
        ("swap", "users:scaled", 400, "EUR/2"),
        ("users:scaled", "shops:1", 400, "EUR/2"),
    ]
    assert balance(sdk, ledger, "users:scaled", "EUR") == 95
    assert balance(sdk, ledger, "users:scaled", "EUR/2") == 1


def test_an_aggregate_past_128_bits_is_a_validation_error(ledger, http):
    base = f"/api/ledger/v2/{ledger}"
    top = 2**127 - 2
    for n in (1, 2):
        plain = f"send [EUR {top}] (source = @deep:{n} allowing unbounded overdraft destination = @rich:{n})"
        res = http.post(f"{base}/transactions", json={"script": {"plain": plain, "vars": {}}})
        assert res.status_code == 200, res.text
    res = http.request("GET", f"{base}/aggregate/balances", json={"$match": {"address": "rich:"}})
    assert (res.status_code, res.json()["errorCode"]) == (400, "VALIDATION")
    res = http.get(f"{base}/volumes", params={"groupBy": "1"})
    assert (res.status_code, res.json()["errorCode"]) == (400, "VALIDATION")
    res = http.request("GET", f"{base}/aggregate/balances", json={"$match": {"address": "rich:1"}})
    assert res.json()["data"] == {"EUR": top}


def test_point_in_time_reads_show_metadata_as_it_was(sdk, ledger):
    tx = fund(sdk, ledger, "users:history", 10, metadata={"state": "new"})
    time.sleep(0.01)
    then = datetime.now(timezone.utc)
    time.sleep(0.01)
    sdk.ledger.v2.add_metadata_to_account(
        request={"ledger": ledger, "address": "users:history", "request_body": {"tier": "gold"}}
    )
    sdk.ledger.v2.add_metadata_on_transaction(
        request={"ledger": ledger, "id": tx.id, "request_body": {"state": "settled"}}
    )

    def account(**at):
        res = sdk.ledger.v2.get_account(
            request={"ledger": ledger, "address": "users:history", **at}
        )
        return res.v2_account_response.data.metadata

    def transaction(**at):
        res = sdk.ledger.v2.get_transaction(request={"ledger": ledger, "id": tx.id, **at})
        return res.v2_get_transaction_response.data.metadata

    def matching(state, **at):
        res = sdk.ledger.v2.list_transactions(
            request={
                "ledger": ledger,
                "request_body": {"$match": {"metadata[state]": state}},
                **at,
            }
        )
        return [t.id for t in res.v2_transactions_cursor_response.cursor.data]

    assert account(pit=then) == {}
    assert account() == {"tier": "gold"}
    assert transaction(pit=then) == {"state": "new"}
    assert transaction() == {"state": "settled"}
    assert matching("new", pit=then) == [tx.id]
    assert matching("new") == []
    assert matching("settled") == [tx.id]


def test_effective_volumes_of_backdated_transactions(sdk, ledger):
    def eff(volumes, account="users:eff"):
        return volumes[account]["USD/2"]

    first = fund(sdk, ledger, "users:eff", 100, timestamp="2025-01-02T00:00:00Z")
    assert eff(first.post_commit_effective_volumes).input == 100
    assert eff(first.pre_commit_effective_volumes).input == 0
    # Dated before the first: at its date it sees only itself, in id order it comes after.
    _, early = post(
        sdk,
        ledger,
        {
            "postings": [
                {"source": "world", "destination": "users:eff", "amount": 7, "asset": "USD/2"}
            ],
            "timestamp": "2025-01-01T00:00:00Z",
        },
    )
    assert eff(early.post_commit_volumes).input == 107
    assert eff(early.post_commit_effective_volumes).input == 7
    assert eff(early.pre_commit_effective_volumes).input == 0
    assert eff(early.post_commit_effective_volumes, "world").output == 7

    # Read back, the first one now counts the one dated before it.
    res = sdk.ledger.v2.get_transaction(
        request={"ledger": ledger, "id": first.id, "expand": "effectiveVolumes"}
    )
    tx = res.v2_get_transaction_response.data
    assert eff(tx.post_commit_effective_volumes).input == 107
    assert eff(tx.pre_commit_effective_volumes).input == 7
    assert tx.post_commit_volumes is None

    res = sdk.ledger.v2.list_transactions(
        request={"ledger": ledger, "expand": "volumes,effectiveVolumes", "request_body": {}}
    )
    listed = {t.id: t for t in res.v2_transactions_cursor_response.cursor.data}
    assert eff(listed[first.id].post_commit_volumes).input == 100
    assert eff(listed[first.id].post_commit_effective_volumes).input == 107
    assert eff(listed[early.id].post_commit_volumes).input == 107
    assert eff(listed[early.id].post_commit_effective_volumes).input == 7

    # Accounts: effectiveVolumes on their own, now and at a point in time.
    res = sdk.ledger.v2.get_account(
        request={"ledger": ledger, "address": "users:eff", "expand": "effectiveVolumes"}
    )
    account = res.v2_account_response.data
    assert account.effective_volumes["USD/2"].balance == 107
    assert account.volumes is None
    res = sdk.ledger.v2.get_account(
        request={
            "ledger": ledger,
            "address": "users:eff",
            "expand": "effectiveVolumes",
            "pit": datetime(2025, 1, 1, 12, tzinfo=timezone.utc),
        }
    )
    assert res.v2_account_response.data.effective_volumes["USD/2"].balance == 7


def test_bigint_as_string_header(sdk, ledger, http):
    # Formance-Bigint-As-String: amounts and volumes as strings (for clients whose numbers are
    # doubles); ids and counts stay numbers; without the header, numbers.
    big = 2**100
    base = f"/api/ledger/v2/{ledger}"
    res = http.post(
        f"{base}/transactions",
        json={"postings": [{"source": "world", "destination": "users:big", "amount": big, "asset": "USD/2"}]},
        headers={"Formance-Bigint-As-String": "true"},
    )
    assert res.status_code == 200, res.text
    tx = res.json()["data"]
    assert tx["postings"][0]["amount"] == str(big)
    assert tx["postCommitVolumes"]["users:big"]["USD/2"] == {"input": str(big), "output": "0", "balance": str(big)}
    assert tx["postCommitVolumes"]["world"]["USD/2"]["balance"] == str(-big)
    assert isinstance(tx["id"], int)

    as_strings = {"Formance-Bigint-As-String": "1"}
    got = http.get(f"{base}/transactions/{tx['id']}", params={"expand": "volumes"}, headers=as_strings).json()
    assert got["data"]["preCommitVolumes"]["users:big"]["USD/2"]["input"] == "0"
    account = http.get(f"{base}/accounts/users:big", params={"expand": "volumes"}, headers=as_strings).json()
    assert account["data"]["volumes"]["USD/2"]["balance"] == str(big)
    query = {"query": json.dumps({"$match": {"address": "users:"}})}
    balances = http.get(f"{base}/aggregate/balances", params=query, headers=as_strings).json()
    assert balances["data"] == {"USD/2": str(big)}
    volumes = http.get(f"{base}/volumes", headers=as_strings).json()
    assert {row["account"]: row["balance"] for row in volumes["cursor"]["data"]} == {
        "users:big": str(big),
        "world": str(-big),
    }
    logs = http.get(f"{base}/logs", headers=as_strings).json()
    assert logs["cursor"]["data"][0]["data"]["transaction"]["postings"][0]["amount"] == str(big)
    assert isinstance(logs["cursor"]["data"][0]["id"], int)

    # Without it, or with a false value: numbers, exact.
    for headers in ({}, {"Formance-Bigint-As-String": "false"}):
        got = http.get(f"{base}/transactions/{tx['id']}", headers=headers).json()
        assert got["data"]["postings"][0]["amount"] == big


def test_bulk_streams(sdk, ledger, http):
    # Formance's two stream types for `_bulk`: JSON elements one after another, and Numscript
    # transactions between `//script` and `//end`; answered as a JSON bulk is.
    url = f"/api/ledger/v2/{ledger}/_bulk"
    elements = [
        {"action": "CREATE_TRANSACTION", "data": {"postings": [
            {"source": "world", "destination": "users:s1", "amount": 10, "asset": "USD"}]}},
        {"action": "ADD_METADATA", "data": {"targetType": "ACCOUNT", "targetId": "users:s1", "metadata": {"k": "v"}}},
    ]
    stream = "\n".join(json.dumps(element) for element in elements) + "\n"
    res = http.post(url, content=stream, headers={"Content-Type": "application/vnd.formance.ledger.api.v2.bulk+json-stream"})
    assert res.status_code == 200, res.text
    results = res.json()["data"]
    assert [r["responseType"] for r in results] == ["CREATE_TRANSACTION", "ADD_METADATA"]
    assert results[0]["data"]["postings"][0]["amount"] == 10

    scripts = (
        "//script: ik=s-1\n"
        "send [USD 3] (\n  source = @users:s1\n  destination = @users:s2\n)\n"
        "//end\n\n"
        "//script\n"
        "send [USD 2] (\n  source = @world\n  destination = @users:s2\n)\n"
        "//end\n"
    )
    script_stream = {"Content-Type": "application/vnd.formance.ledger.api.v2.bulk+script-stream"}
    res = http.post(url, content=scripts, headers=script_stream)
    assert res.status_code == 200, res.text
    first = res.json()["data"][0]["data"]
    assert [r["responseType"] for r in res.json()["data"]] == ["CREATE_TRANSACTION"] * 2
    account = http.get(f"/api/ledger/v2/{ledger}/accounts/users:s2", params={"expand": "volumes"}).json()
    assert account["data"]["volumes"]["USD"]["balance"] == 5
    # The idempotency key of a script header: the same script again is the same transaction.
    res = http.post(url, content=scripts.split("\n\n")[0] + "\n", headers=script_stream)
    assert res.status_code == 200, res.text
    assert res.json()["data"][0]["data"]["id"] == first["id"]

    # Malformed streams: a 400 naming the problem, nothing written.
    count_before = int(http.head(f"/api/ledger/v2/{ledger}/transactions").headers["Count"])
    for body, headers, needle in [
        ("send [USD 1] (source = @world destination = @a)\n", script_stream, "expected //script"),
        ("//script\nsend [USD 1] (source = @world destination = @a)\n", script_stream, "no //end"),
        ("//script: key=1\n//end\n", script_stream, "unknown header option"),
        ('{"action": "CREATE_TRANSACTION", "data": {}} {oops', {"Content-Type": "application/vnd.formance.ledger.api.v2.bulk+json-stream"}, "element 1"),
    ]:
        res = http.post(url, content=body, headers=headers)
        assert res.status_code == 400, res.text
        assert res.json()["errorCode"] == "VALIDATION", res.text
        assert needle in res.json()["errorMessage"], res.text
    assert int(http.head(f"/api/ledger/v2/{ledger}/transactions").headers["Count"]) == count_before
