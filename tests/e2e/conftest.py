"""Shared fixtures: an SDK pointed at the running `coffer serve` (COFFER_URL)."""

import os
import uuid

import httpx
import pytest
from formance_sdk_python import SDK


def server_url() -> str:
    url = os.environ.get("COFFER_URL")
    if not url:
        raise RuntimeError(
            "COFFER_URL is not set: run these tests through `cargo test --release -p coffer --test e2e`, "
            "or start `coffer serve` and export COFFER_URL=http://127.0.0.1:PORT"
        )
    return url.rstrip("/")


@pytest.fixture(scope="session")
def url() -> str:
    return server_url()


@pytest.fixture(scope="session")
def sdk(url) -> SDK:
    # No security: the SDK then sends no Authorization header.
    return SDK(server_url=url)


@pytest.fixture(scope="session")
def http(url):
    """A raw client, for what the SDK hides (headers of HEAD responses are also on the SDK)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def ledger(sdk) -> str:
    """A fresh ledger for one test."""
    name = unique("e2e")
    res = sdk.ledger.v2.create_ledger(request={"ledger": name, "v2_create_ledger_request": {}})
    assert res.status_code == 204
    return name
