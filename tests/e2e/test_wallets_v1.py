"""Wallets v1 through the official Python SDK (`sdk.wallets.v1.*`) against `coffer serve`."""

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from formance_sdk_python.models import wallets as W
from formance_sdk_python.models.errors import SDKBaseError

from conftest import unique


def create_wallet(sdk, name=None, metadata=None, **extra):
    res = sdk.wallets.v1.create_wallet(
        request={
            "create_wallet_request": {"name": name or unique("w"), "metadata": metadata or {}},
            **extra,
        }
    )
    assert res.status_code == 201
    return res.create_wallet_response.data


def create_balance(sdk, wallet_id, name, priority=None, expires_at=None):
    balance = {"name": name}
    if priority is not None:
        balance["priority"] = priority
    if expires_at is not None:
        balance["expires_at"] = expires_at
    res = sdk.wallets.v1.create_balance(request={"id": wallet_id, "balance": balance})
    assert res.status_code == 201
    return res.create_balance_response.data


def credit(sdk, wallet_id, amount, asset="USD/2", balance=None, **extra):
    body = {"amount": {"asset": asset, "amount": amount}, "metadata": {}}
    if balance:
        body["balance"] = balance
    body.update(extra.pop("body", {}))
    res = sdk.wallets.v1.credit_wallet(
        request={"id": wallet_id, "credit_wallet_request": body, **extra}
    )
    assert res.status_code == 204
    return res


def debit(sdk, wallet_id, amount, asset="USD/2", **fields):
    idempotency_key = fields.pop("idempotency_key", None)
    body = {"amount": {"asset": asset, "amount": amount}, "metadata": {}, **fields}
    request = {"id": wallet_id, "debit_wallet_request": body}
    if idempotency_key:
        request["idempotency_key"] = idempotency_key
    return sdk.wallets.v1.debit_wallet(request=request)


def balances_by_name(sdk, wallet_id, asset="USD/2"):
    """Each balance's amount of `asset`, read one by one with getBalance."""
    res = sdk.wallets.v1.list_balances(request={"id": wallet_id})
    out = {}
    for balance in res.list_balances_response.cursor.data:
        got = sdk.wallets.v1.get_balance(request={"id": wallet_id, "balance_name": balance.name})
        out[balance.name] = got.get_balance_response.data.assets.get(asset, 0)
    return out


def main_balance(sdk, wallet_id, asset="USD/2"):
    res = sdk.wallets.v1.get_wallet(request={"id": wallet_id})
    assert res.status_code == 200
    return res.get_wallet_response.data.balances.main.assets.get(asset, 0)


def wallet_error(excinfo):
    return excinfo.value.status_code, excinfo.value.data.error_code.value


def test_server_info(sdk):
    res = sdk.wallets.v1.get_server_info_wallets()
    assert res.status_code == 200
    assert res.server_info.version


def test_create_and_get_wallet(sdk):
    name = unique("alice")
    wallet = create_wallet(sdk, name, {"team": "e2e", "tier": "gold"})
    assert wallet.name == name
    assert wallet.metadata == {"team": "e2e", "tier": "gold"}
    assert len(wallet.id) == 36  # a UUID with dashes
    assert wallet.created_at.tzinfo is not None
    assert wallet.ledger

    res = sdk.wallets.v1.get_wallet(request={"id": wallet.id})
    got = res.get_wallet_response.data
    assert got.id == wallet.id
    assert got.name == name
    assert got.metadata == {"team": "e2e", "tier": "gold"}
    assert got.balances.main.assets == {}

    # The wallet is the ledger account wallets:<id without dashes>:main, visible through the ledger API.
    address = f"wallets:{wallet.id.replace('-', '')}:main"
    account = sdk.ledger.v2.get_account(request={"ledger": wallet.ledger, "address": address})
    meta = account.v2_account_response.data.metadata
    assert meta["wallets/spec/type"] == "wallets.primary"
    assert meta["wallets/name"] == name
    assert meta["wallets/custom_data_tier"] == "gold"

    # Metadata update merges.
    res = sdk.wallets.v1.update_wallet(
        request={"id": wallet.id, "request_body": {"metadata": {"tier": "platinum", "new": "1"}}}
    )
    assert res.status_code == 204
    got = sdk.wallets.v1.get_wallet(request={"id": wallet.id}).get_wallet_response.data
    assert got.metadata == {"team": "e2e", "tier": "platinum", "new": "1"}

    # An unknown wallet is an empty-bodied 404, which the SDK returns as a nil result.
    missing = "00000000-0000-4000-8000-000000000000"
    res = sdk.wallets.v1.get_wallet(request={"id": missing})
    assert res.status_code == 404
    assert res.get_wallet_response is None
    assert res.raw_response.content == b""
    # Other operations surface it as an error carrying the 404.
    with pytest.raises(SDKBaseError) as excinfo:
        sdk.wallets.v1.get_hold(request={"hold_id": missing})
    assert excinfo.value.status_code == 404


def test_credit_and_balances_with_priority_and_expiry(sdk):
    wallet = create_wallet(sdk)
    later = datetime.now(timezone.utc) + timedelta(days=30)
    soon = datetime.now(timezone.utc) + timedelta(days=1)
    coupon = create_balance(sdk, wallet.id, "coupon", expires_at=soon)
    assert coupon.name == "coupon"
    assert coupon.expires_at is not None
    assert abs((coupon.expires_at - soon).total_seconds()) < 1
    bonus = create_balance(sdk, wallet.id, "bonus", priority=10)
    assert bonus.priority == 10
    assert bonus.expires_at is None
    promo = create_balance(sdk, wallet.id, "promo", priority=1, expires_at=later)
    assert promo.priority == 1

    credit(sdk, wallet.id, 1000)
    credit(sdk, wallet.id, 300, balance="coupon")
    credit(sdk, wallet.id, 200, balance="bonus")
    credit(sdk, wallet.id, 50, balance="promo")
    credit(sdk, wallet.id, 5, asset="EUR")

    assert main_balance(sdk, wallet.id) == 1000
    assert main_balance(sdk, wallet.id, "EUR") == 5
    assert balances_by_name(sdk, wallet.id) == {"main": 1000, "coupon": 300, "bonus": 200, "promo": 50}

    res = sdk.wallets.v1.list_balances(request={"id": wallet.id})
    listed = {b.name: b for b in res.list_balances_response.cursor.data}
    assert listed["bonus"].priority == 10
    assert listed["coupon"].expires_at is not None

    # Balance names are checked; `main` is reserved; duplicates are refused.
    for bad in ("main", "no spaces", "coupon"):
        with pytest.raises(W.ErrorResponse) as excinfo:
            sdk.wallets.v1.create_balance(request={"id": wallet.id, "balance": {"name": bad}})
        assert wallet_error(excinfo) == (400, "VALIDATION")

    # Credit to an unknown balance, a negative amount, a bad asset.
    with pytest.raises(W.ErrorResponse) as excinfo:
        credit(sdk, wallet.id, 1, balance="nope")
    assert wallet_error(excinfo) == (400, "VALIDATION")
    with pytest.raises(W.ErrorResponse) as excinfo:
        credit(sdk, wallet.id, -1)
    assert wallet_error(excinfo) == (400, "VALIDATION")
    with pytest.raises(W.ErrorResponse) as excinfo:
        credit(sdk, wallet.id, 1, asset="usd")
    assert wallet_error(excinfo) == (400, "VALIDATION")

    # Credit from another wallet's balance moves funds between wallets.
    payer = create_wallet(sdk)
    credit(sdk, payer.id, 80)
    credit(
        sdk,
        wallet.id,
        30,
        body={"sources": [{"type": "WALLET", "identifier": payer.id}], "reference": unique("ref")},
    )
    assert main_balance(sdk, payer.id) == 50
    assert main_balance(sdk, wallet.id) == 1030
    # A non-world source without funds: 400 INSUFFICIENT_FUND (Formance answers 500 here).
    with pytest.raises(W.ErrorResponse) as excinfo:
        credit(sdk, wallet.id, 1000, body={"sources": [{"type": "WALLET", "identifier": payer.id}]})
    assert wallet_error(excinfo) == (400, "INSUFFICIENT_FUND")


def test_debit_from_main_and_wildcard_order(sdk):
    wallet = create_wallet(sdk)
    now = datetime.now(timezone.utc)
    # Formance's example order for "*": expiring first (soonest first), then by priority, main last.
    create_balance(sdk, wallet.id, "coupon1", expires_at=now + timedelta(hours=1))
    create_balance(sdk, wallet.id, "coupon2", priority=10)
    create_balance(sdk, wallet.id, "coupon3", expires_at=now + timedelta(days=3))
    create_balance(sdk, wallet.id, "coupon4", priority=0)
    create_balance(sdk, wallet.id, "expired", expires_at=now - timedelta(hours=1))
    for name in ("coupon1", "coupon2", "coupon3", "coupon4", "expired"):
        credit(sdk, wallet.id, 100, balance=name)
    credit(sdk, wallet.id, 100)

    # Plain debit takes from main.
    res = debit(sdk, wallet.id, 30)
    assert res.status_code == 204
    assert main_balance(sdk, wallet.id) == 70

    # "*": coupon1 (100), coupon3 (100), coupon4 (100), coupon2 (30 of 100); main untouched, expired skipped.
    res = debit(sdk, wallet.id, 330, balances=["*"])
    assert res.status_code == 204
    assert balances_by_name(sdk, wallet.id) == {
        "main": 70,
        "coupon1": 0,
        "coupon2": 70,
        "coupon3": 0,
        "coupon4": 0,
        "expired": 100,
    }
    # "*" reaches main last.
    res = debit(sdk, wallet.id, 100, balances=["*"])
    assert res.status_code == 204
    assert balances_by_name(sdk, wallet.id)["main"] == 40
    assert balances_by_name(sdk, wallet.id)["coupon2"] == 0

    # Explicit balances in the given order.
    credit(sdk, wallet.id, 10, balance="coupon4")
    res = debit(sdk, wallet.id, 15, balances=["coupon4", "main"])
    assert res.status_code == 204
    assert balances_by_name(sdk, wallet.id)["coupon4"] == 0
    assert main_balance(sdk, wallet.id) == 35

    # Not enough across everything usable (the expired balance does not count).
    with pytest.raises(W.ErrorResponse) as excinfo:
        debit(sdk, wallet.id, 36, balances=["*"])
    assert wallet_error(excinfo) == (400, "INSUFFICIENT_FUND")
    with pytest.raises(W.ErrorResponse) as excinfo:
        debit(sdk, wallet.id, 1, balances=["expired"])
    assert wallet_error(excinfo) == (400, "INSUFFICIENT_FUND")
    # "*" mixed with names; an unknown explicit balance (Formance answers 500 here).
    with pytest.raises(W.ErrorResponse) as excinfo:
        debit(sdk, wallet.id, 1, balances=["*", "main"])
    assert wallet_error(excinfo) == (400, "VALIDATION")
    with pytest.raises(W.ErrorResponse) as excinfo:
        debit(sdk, wallet.id, 1, balances=["nope"])
    assert wallet_error(excinfo) == (400, "VALIDATION")
    assert main_balance(sdk, wallet.id) == 35

    # Debit to another wallet.
    other = create_wallet(sdk)
    res = debit(sdk, wallet.id, 5, destination={"type": "WALLET", "identifier": other.id})
    assert res.status_code == 204
    assert main_balance(sdk, other.id) == 5
    assert main_balance(sdk, wallet.id) == 30


def test_holds_confirm_and_void(sdk):
    wallet = create_wallet(sdk)
    create_balance(sdk, wallet.id, "gift", priority=1)
    credit(sdk, wallet.id, 600)
    credit(sdk, wallet.id, 400, balance="gift")

    # Pending debit → a hold (201), funds leave the balances at once.
    merchant_address = f"merchants:{uuid.uuid4().hex}"
    res = debit(
        sdk,
        wallet.id,
        500,
        pending=True,
        description="taxi ride",
        metadata={"ride": "r-1"},
        destination={"type": "ACCOUNT", "identifier": merchant_address},
    )
    assert res.status_code == 201
    hold = res.debit_wallet_response.data
    assert hold.wallet_id == wallet.id
    assert hold.asset == "USD/2"
    assert hold.description == "taxi ride"
    assert hold.metadata == {"ride": "r-1"}
    assert hold.destination.identifier == merchant_address
    assert main_balance(sdk, wallet.id) == 100

    got = sdk.wallets.v1.get_hold(request={"hold_id": hold.id}).get_hold_response.data
    assert (got.original_amount, got.remaining) == (500, 500)

    # Partial confirm, then final confirm returns the rest to main.
    res = sdk.wallets.v1.confirm_hold(
        request={"hold_id": hold.id, "confirm_hold_request": {"amount": 200}}
    )
    assert res.status_code == 204
    got = sdk.wallets.v1.get_hold(request={"hold_id": hold.id}).get_hold_response.data
    assert (got.original_amount, got.remaining) == (500, 300)
    with pytest.raises(W.ErrorResponse) as excinfo:
        sdk.wallets.v1.confirm_hold(
            request={"hold_id": hold.id, "confirm_hold_request": {"amount": 301}}
        )
    assert wallet_error(excinfo) == (400, "INSUFFICIENT_FUND")
    res = sdk.wallets.v1.confirm_hold(
        request={"hold_id": hold.id, "confirm_hold_request": {"amount": 100, "final": True}}
    )
    assert res.status_code == 204
    got = sdk.wallets.v1.get_hold(request={"hold_id": hold.id}).get_hold_response.data
    assert got.remaining == 0
    assert main_balance(sdk, wallet.id) == 300  # 100 left + 200 returned by the final confirm
    merchant = sdk.ledger.v2.get_account(
        request={"ledger": wallet.ledger, "address": merchant_address, "expand": "volumes"}
    )
    assert merchant.v2_account_response.data.volumes["USD/2"].balance == 300
    with pytest.raises(W.ErrorResponse) as excinfo:
        sdk.wallets.v1.confirm_hold(request={"hold_id": hold.id})
    assert wallet_error(excinfo) == (400, "HOLD_CLOSED")
    with pytest.raises(W.ErrorResponse) as excinfo:
        sdk.wallets.v1.void_hold(request={"hold_id": hold.id})
    assert wallet_error(excinfo) == (400, "HOLD_CLOSED")

    # Void: funds go back to the original sources (here gift first, then main).
    res = debit(sdk, wallet.id, 450, pending=True, balances=["gift", "main"])
    assert res.status_code == 201
    hold2 = res.debit_wallet_response.data
    assert balances_by_name(sdk, wallet.id) == {"main": 250, "gift": 0}
    res = sdk.wallets.v1.confirm_hold(
        request={"hold_id": hold2.id, "confirm_hold_request": {"amount": 50}}
    )
    assert res.status_code == 204
    res = sdk.wallets.v1.void_hold(request={"hold_id": hold2.id})
    assert res.status_code == 204
    got = sdk.wallets.v1.get_hold(request={"hold_id": hold2.id}).get_hold_response.data
    assert got.remaining == 0
    # 400 remained, returned per posting in posting order, capped at each posting's amount:
    # gift gave 400 and gets 400 back; main gave 50 and gets nothing (that 50 was confirmed).
    assert balances_by_name(sdk, wallet.id) == {"main": 250, "gift": 400}

    # A pending debit with a timestamp is a client error (Formance answers 500).
    with pytest.raises(W.ErrorResponse) as excinfo:
        debit(sdk, wallet.id, 1, pending=True, timestamp=datetime.now(timezone.utc))
    assert wallet_error(excinfo) == (400, "VALIDATION")

    # Holds list, filtered by wallet and metadata.
    res = sdk.wallets.v1.get_holds(request={"wallet_id": wallet.id})
    holds = res.get_holds_response.cursor.data
    assert {h.id for h in holds} == {hold.id, hold2.id}
    res = sdk.wallets.v1.get_holds(request={"wallet_id": wallet.id, "metadata": {"ride": "r-1"}})
    assert [h.id for h in res.get_holds_response.cursor.data] == [hold.id]


def test_summary_figures(sdk):
    # The Formance e2e scenario: main 1000, b1 1000 (priority 10), b2 1000 (expires in a minute),
    # b3 1000 (expired), then pending debits of 1500, 500 and 700.
    wallet = create_wallet(sdk)
    now = datetime.now(timezone.utc)
    create_balance(sdk, wallet.id, "b1", priority=10)
    create_balance(sdk, wallet.id, "b2", expires_at=now + timedelta(minutes=5))
    create_balance(sdk, wallet.id, "b3", expires_at=now - timedelta(minutes=1))
    credit(sdk, wallet.id, 1000, asset="USD")
    for name in ("b1", "b2", "b3"):
        credit(sdk, wallet.id, 1000, asset="USD", balance=name)
    for amount, sources in ((1500, ["b1", "main"]), (500, ["main"]), (700, ["b2"])):
        res = debit(sdk, wallet.id, amount, asset="USD", pending=True, balances=sources)
        assert res.status_code == 201

    res = sdk.wallets.v1.get_wallet_summary(request={"id": wallet.id})
    assert res.status_code == 200
    summary = res.get_wallet_summary_response.data
    assert summary.available_funds == {"USD": 300}
    assert summary.expirable_funds == {"USD": 300}
    assert summary.expired_funds == {"USD": 1000}
    assert summary.hold_funds == {"USD": 2700}
    by_name = {b.name: b.assets.get("USD", 0) for b in summary.balances}
    assert by_name == {"main": 0, "b1": 0, "b2": 300, "b3": 1000}

    # With "*" instead, expiring b2 goes first and main last: what is left is in main.
    wallet = create_wallet(sdk)
    create_balance(sdk, wallet.id, "b1", priority=10)
    create_balance(sdk, wallet.id, "b2", expires_at=now + timedelta(minutes=5))
    for name in ("main", "b1", "b2"):
        credit(sdk, wallet.id, 1000, asset="USD", balance=None if name == "main" else name)
    for amount in (1500, 500, 700):
        assert debit(sdk, wallet.id, amount, asset="USD", pending=True, balances=["*"]).status_code == 201
    summary = sdk.wallets.v1.get_wallet_summary(request={"id": wallet.id}).get_wallet_summary_response.data
    assert summary.available_funds == {"USD": 300}
    assert summary.expirable_funds == {"USD": 0}
    assert summary.hold_funds == {"USD": 2700}
    assert {b.name: b.assets.get("USD", 0) for b in summary.balances} == {"main": 300, "b1": 0, "b2": 0}


def test_lists_with_metadata_filters_and_pagination(sdk):
    tag = unique("group")
    ids = [create_wallet(sdk, unique(f"p{i}"), {"group": tag, "parity": str(i % 2)}).id for i in range(5)]
    named = create_wallet(sdk, unique("named"), {"group": tag, "parity": "x"})
    credit(sdk, named.id, 42)

    # Pages of 2 with the cursor.
    seen = []
    res = sdk.wallets.v1.list_wallets(request={"metadata": {"group": tag}, "page_size": 2})
    pages = 0
    while True:
        cursor = res.list_wallets_response.cursor
        assert cursor.page_size == 2
        assert len(cursor.data) <= 2
        seen.extend(w.id for w in cursor.data)
        pages += 1
        if not cursor.has_more:
            break
        res = sdk.wallets.v1.list_wallets(request={"cursor": cursor.next, "page_size": 2})
    assert pages == 3
    assert sorted(seen) == sorted(ids + [named.id])
    assert len(set(seen)) == 6

    # Two metadata filters and a name filter.
    res = sdk.wallets.v1.list_wallets(request={"metadata": {"group": tag, "parity": "1"}})
    assert sorted(w.id for w in res.list_wallets_response.cursor.data) == sorted([ids[1], ids[3]])
    res = sdk.wallets.v1.list_wallets(request={"name": named.name, "expand": "balances"})
    data = res.list_wallets_response.cursor.data
    assert [w.id for w in data] == [named.id]
    assert data[0].balances.main.assets == {"USD/2": 42}

    # Wallet transactions, newest first, filtered by wallet, paginated.
    credit(sdk, named.id, 8)
    debit(sdk, named.id, 10)
    res = sdk.wallets.v1.get_transactions(request={"wallet_id": named.id, "page_size": 2})
    cursor = res.get_transactions_response.cursor
    assert len(cursor.data) == 2
    assert cursor.has_more
    first, second = cursor.data
    assert first.id > second.id
    assert [(p.source, p.amount) for p in first.postings] == [(f"wallets:{named.id.replace('-', '')}:main", 10)]
    assert first.metadata.get("wallets/transaction") == "true"
    res = sdk.wallets.v1.get_transactions(request={"cursor": cursor.next, "page_size": 2})
    assert [(p.destination, p.amount) for p in res.get_transactions_response.cursor.data[0].postings] == [
        (f"wallets:{named.id.replace('-', '')}:main", 42)
    ]

    # Balances list filtered by metadata is empty for unknown keys.
    res = sdk.wallets.v1.list_wallets(request={"metadata": {"group": unique("none")}})
    assert res.list_wallets_response.cursor.data == []


def test_idempotent_replay(sdk):
    key = unique("ik")
    name = unique("idem")
    first = create_wallet(sdk, name, {"k": "v"}, idempotency_key=key)
    again = create_wallet(sdk, name, {"k": "v"}, idempotency_key=key)
    assert again.id == first.id
    res = sdk.wallets.v1.list_wallets(request={"name": name})
    assert [w.id for w in res.list_wallets_response.cursor.data] == [first.id]

    # Credit replay applies once.
    credit_key = unique("credit")
    for _ in range(3):
        credit(sdk, first.id, 250, idempotency_key=credit_key)
    assert main_balance(sdk, first.id) == 250

    # Debit replay applies once.
    debit_key = unique("debit")
    for _ in range(2):
        res = debit(sdk, first.id, 100, idempotency_key=debit_key)
        assert res.status_code == 204
    assert main_balance(sdk, first.id) == 150

    # A pending debit replays to the same hold.
    hold_key = unique("hold")
    holds = [
        debit(sdk, first.id, 50, pending=True, idempotency_key=hold_key).debit_wallet_response.data.id
        for _ in range(2)
    ]
    assert holds[0] == holds[1]
    assert main_balance(sdk, first.id) == 100

    # Confirm replay applies once.
    confirm_key = unique("confirm")
    for _ in range(2):
        res = sdk.wallets.v1.confirm_hold(
            request={"hold_id": holds[0], "confirm_hold_request": {"amount": 20}, "idempotency_key": confirm_key}
        )
        assert res.status_code == 204
    got = sdk.wallets.v1.get_hold(request={"hold_id": holds[0]}).get_hold_response.data
    assert got.remaining == 30

    # The same key with another body is refused.
    with pytest.raises(W.ErrorResponse) as excinfo:
        credit(sdk, first.id, 999, idempotency_key=credit_key)
    assert wallet_error(excinfo)[0] == 400
    assert main_balance(sdk, first.id) == 100
