"""The official Python SDK with client credentials against `coffer serve` with authentication on.

    python auth_check.py --url URL --other-url URL2

Both servers share one store, one clients file and one signing key (two processes of one
deployment). The clients (see crates/coffer/tests/e2e.rs): `shop` (every scope, its secret in
COFFER_SHOP_SECRET) and `auditor` (ledger:read, its secret in COFFER_AUDITOR_SECRET).

Prints `auth: passed` at the end; any failed check raises.
"""

import argparse
import os
import uuid

import httpx
from formance_sdk_python import SDK
from formance_sdk_python.models.shared import Security


def sdk(url, client_id, secret):
    # The SDK's client-credentials hook posts to /api/auth/oauth/token (its default token URL,
    # resolved against the server URL) with the operation's scope, then sends the bearer token.
    return SDK(server_url=url, security=Security(client_id=client_id, client_secret=secret))


def raises_status(call, status):
    """`call` fails with HTTP `status`: from the API, or from the token endpoint (the hook then
    raises a plain Exception naming the status)."""
    try:
        call()
    except Exception as err:
        response = getattr(err, "raw_response", None)
        if response is not None:
            assert response.status_code == status, f"{response.status_code}: {err}"
        else:
            assert f"status code {status} from token endpoint" in str(err), repr(err)
        return
    raise AssertionError(f"expected status {status}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--other-url", required=True)
    args = parser.parse_args()

    shop_secret = os.environ["COFFER_SHOP_SECRET"]
    shop = sdk(args.url, "shop", shop_secret)
    ledger = f"auth-{uuid.uuid4().hex[:12]}"
    res = shop.ledger.v2.create_ledger(request={"ledger": ledger, "v2_create_ledger_request": {}})
    assert res.status_code == 204
    res = shop.ledger.v2.create_transaction(
        request={
            "ledger": ledger,
            "v2_post_transaction": {
                "postings": [{"source": "world", "destination": "users:1", "amount": 250, "asset": "USD/2"}],
                "metadata": {},
            },
        }
    )
    tx = res.v2_create_transaction_response.data
    wallet = shop.wallets.v1.create_wallet(
        request={"create_wallet_request": {"name": "alice", "metadata": {}}}
    ).create_wallet_response.data
    res = shop.wallets.v1.credit_wallet(
        request={
            "id": wallet.id,
            "credit_wallet_request": {"amount": {"asset": "USD/2", "amount": 100}, "metadata": {}},
        }
    )
    assert res.status_code == 204

    # A read-only client reads, through the other process (which checks the token with the
    # shared key), and cannot get a token to write.
    auditor = sdk(args.other_url, "auditor", os.environ["COFFER_AUDITOR_SECRET"])
    got = auditor.ledger.v2.get_transaction(request={"ledger": ledger, "id": tx.id})
    assert got.v2_get_transaction_response.data.postings[0].amount == 250
    raises_status(
        lambda: auditor.ledger.v2.add_metadata_on_transaction(
            request={"ledger": ledger, "id": tx.id, "request_body": {"k": "v"}}
        ),
        400,
    )
    raises_status(lambda: auditor.wallets.v1.list_wallets(request={}), 400)

    # No credentials, or a wrong secret: refused, nothing read.
    anonymous = SDK(server_url=args.url)
    raises_status(lambda: anonymous.ledger.v2.get_transaction(request={"ledger": ledger, "id": tx.id}), 401)
    raises_status(lambda: sdk(args.url, "shop", "wrong").ledger.v2.list_ledgers(request={"request_body": {}}), 401)

    # A token from one process works on the other (the same signing key), and only for its scope.
    with httpx.Client(timeout=30) as http:
        token = http.post(
            f"{args.url}/api/auth/oauth/token",
            data={"grant_type": "client_credentials", "client_id": "shop", "client_secret": shop_secret,
                  "scope": "wallets:read"},
        )
        assert token.status_code == 200, token.text
        bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
        res = http.get(f"{args.other_url}/api/wallets/wallets/{wallet.id}", headers=bearer)
        assert res.status_code == 200, res.text
        assert res.json()["data"]["balances"]["main"]["assets"] == {"USD/2": 100}
        res = http.get(f"{args.other_url}/api/ledger/v2/{ledger}/transactions", headers=bearer)
        assert res.status_code == 403, res.text
    print("auth: passed")


if __name__ == "__main__":
    main()
