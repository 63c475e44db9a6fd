// The official TypeScript SDK against `coffer serve` (COFFER_URL), as a client would use it: its
// responses go through the SDK's own schemas (bigints, dates), so a field of the wrong shape fails.
import assert from "node:assert/strict";
import { SDK } from "@formance/formance-sdk";

const sdk = new SDK({ serverURL: process.env.COFFER_URL });
const ledger = `ts-${process.pid}-${Date.now()}`;

await sdk.ledger.v2.createLedger({ ledger, v2CreateLedgerRequest: { metadata: { owner: "ts" } } });
const created = await sdk.ledger.v2.createTransaction({
  ledger,
  v2PostTransaction: {
    postings: [{ source: "world", destination: "users:1", amount: 100n, asset: "USD/2" }],
    metadata: { order: "1" },
    reference: "ref-1",
  },
});
const tx = created.v2CreateTransactionResponse.data;
assert.equal(tx.id, 1n);
assert.equal(tx.postings[0].amount, 100n);
assert.ok(tx.timestamp instanceof Date);
assert.equal(tx.postCommitVolumes["users:1"]["USD/2"].balance, 100n);
assert.equal(tx.postCommitEffectiveVolumes["users:1"]["USD/2"].balance, 100n);

// A backdated one, then its effective volumes read back.
const early = (
  await sdk.ledger.v2.createTransaction({
    ledger,
    v2PostTransaction: {
      postings: [{ source: "world", destination: "users:1", amount: 7n, asset: "USD/2" }],
      timestamp: new Date("2020-01-01T00:00:00Z"),
      metadata: {},
    },
  })
).v2CreateTransactionResponse.data;
assert.equal(early.postCommitEffectiveVolumes["users:1"]["USD/2"].input, 7n);
const first = (
  await sdk.ledger.v2.getTransaction({ ledger, id: 1n, expand: "volumes,effectiveVolumes" })
).v2GetTransactionResponse.data;
assert.equal(first.postCommitVolumes["users:1"]["USD/2"].input, 100n);
assert.equal(first.postCommitEffectiveVolumes["users:1"]["USD/2"].input, 107n);

const listed = await sdk.ledger.v2.listTransactions({ ledger, expand: "volumes", query: {} });
assert.deepEqual(listed.v2TransactionsCursorResponse.cursor.data.map((t) => t.id), [2n, 1n]);
const account = (
  await sdk.ledger.v2.getAccount({ ledger, address: "users:1", expand: "volumes,effectiveVolumes" })
).v2AccountResponse.data;
assert.equal(account.volumes["USD/2"].balance, 107n);
assert.equal(account.effectiveVolumes["USD/2"].balance, 107n);
const accounts = await sdk.ledger.v2.listAccounts({ ledger, query: { $match: { address: "users:" } } });
assert.deepEqual(accounts.v2AccountsCursorResponse.cursor.data.map((a) => a.address), ["users:1"]);
const reverted = await sdk.ledger.v2.revertTransaction({ ledger, id: 1n });
assert.equal(reverted.v2CreateTransactionResponse.data.postings[0].destination, "world");
const sums = await sdk.ledger.v2.getBalancesAggregated({ ledger, query: {} });
assert.equal(sums.v2AggregateBalancesResponse.data["USD/2"], 0n);
const logs = await sdk.ledger.v2.listLogs({ ledger, query: {} });
assert.equal(logs.v2LogsCursorResponse.cursor.data.length, 3);
const info = await sdk.ledger.v2.getLedger({ ledger });
assert.equal(info.v2GetLedgerResponse.data.name, ledger);
await assert.rejects(
  sdk.ledger.v2.createTransaction({
    ledger,
    v2PostTransaction: {
      postings: [{ source: "users:2", destination: "users:1", amount: 1n, asset: "USD/2" }],
      metadata: {},
    },
  }),
  (err) => err.errorCode === "INSUFFICIENT_FUND",
);

// Counts, volumes, metadata, bulk, ledgers and stats.
const counted = await sdk.ledger.v2.countTransactions({ ledger, query: {} });
assert.equal(counted.headers["count"][0], "3");
const counts = await sdk.ledger.v2.countAccounts({ ledger, query: {} });
assert.equal(counts.headers["count"][0], "2");
const volumes = await sdk.ledger.v2.getVolumesWithBalances({
  ledger,
  endTime: new Date("2030-01-01T00:00:00Z"),
  insertionDate: true,
  query: {},
});
const rows = volumes.v2VolumesWithBalanceCursorResponse.cursor.data;
assert.deepEqual(
  rows.map((r) => [r.account, r.balance]),
  [["users:1", 7n], ["world", -7n]],
);
await sdk.ledger.v2.addMetadataOnTransaction({ ledger, id: 2n, requestBody: { state: "seen" } });
await sdk.ledger.v2.deleteTransactionMetadata({ ledger, id: 2n, key: "state" });
await sdk.ledger.v2.addMetadataToAccount({ ledger, address: "users:1", requestBody: { tier: "gold" } });
const bulk = await sdk.ledger.v2.createBulk({
  ledger,
  atomic: true,
  requestBody: [
    {
      action: "CREATE_TRANSACTION",
      data: { postings: [{ source: "world", destination: "users:3", amount: 5n, asset: "EUR" }], metadata: {} },
    },
    { action: "ADD_METADATA", data: { targetType: "ACCOUNT", targetId: "users:3", metadata: { via: "bulk" } } },
  ],
});
assert.deepEqual(bulk.v2BulkResponse.data.map((r) => r.responseType), ["CREATE_TRANSACTION", "ADD_METADATA"]);
await sdk.ledger.v2.updateLedgerMetadata({ ledger, requestBody: { team: "payments" } });
const ledgers = await sdk.ledger.v2.listLedgers({ pageSize: 100, query: {} });
assert.ok(ledgers.v2LedgerListResponse.cursor.data.some((l) => l.name === ledger));
const stats = await sdk.ledger.v2.readStats({ ledger });
assert.equal(stats.v2StatsResponse.data.transactions, 4n);
const ledgerInfo = await sdk.ledger.v2.getLedgerInfo({ ledger });
assert.equal(ledgerInfo.v2LedgerInfoResponse.data.name, ledger);

// Wallets: a credit, a hold, its confirmation, the summary.
const wallet = (
  await sdk.wallets.v1.createWallet({ createWalletRequest: { name: `w-${ledger}`, metadata: {} } })
).createWalletResponse.data;
await sdk.wallets.v1.creditWallet({
  id: wallet.id,
  creditWalletRequest: { amount: { asset: "USD/2", amount: 1000n }, metadata: {} },
});
const hold = (
  await sdk.wallets.v1.debitWallet({
    id: wallet.id,
    debitWalletRequest: { amount: { asset: "USD/2", amount: 300n }, pending: true, metadata: {} },
  })
).debitWalletResponse.data;
await sdk.wallets.v1.confirmHold({ holdId: hold.id, confirmHoldRequest: { amount: 200n, final: true } });
const summary = (await sdk.wallets.v1.getWalletSummary({ id: wallet.id })).getWalletSummaryResponse.data;
assert.equal(summary.availableFunds["USD/2"], 800n);
assert.equal(summary.holdFunds["USD/2"] ?? 0n, 0n);
const balance = (await sdk.wallets.v1.getBalance({ id: wallet.id, balanceName: "main" })).getBalanceResponse.data;
assert.equal(balance.assets["USD/2"], 800n);
const txs = await sdk.wallets.v1.getTransactions({ walletID: wallet.id });
assert.ok(txs.getTransactionsResponse.cursor.data.length >= 2);
await sdk.wallets.v1.createBalance({
  id: wallet.id,
  balance: { name: "gift", expiresAt: new Date("2031-01-01T00:00:00Z"), priority: 1n },
});
const balances = (await sdk.wallets.v1.listBalances({ id: wallet.id })).listBalancesResponse.cursor.data;
assert.deepEqual(balances.map((b) => b.name).sort(), ["gift", "main"]);
const second = (
  await sdk.wallets.v1.debitWallet({
    id: wallet.id,
    debitWalletRequest: { amount: { asset: "USD/2", amount: 50n }, pending: true, metadata: {} },
  })
).debitWalletResponse.data;
const holds = (await sdk.wallets.v1.getHolds({ walletID: wallet.id })).getHoldsResponse.cursor.data;
assert.equal(holds.length, 2);
await sdk.wallets.v1.voidHold({ holdId: second.id });
const held = (await sdk.wallets.v1.getHold({ holdID: second.id })).getHoldResponse.data;
assert.equal(held.remaining, 0n);
await assert.rejects(
  sdk.wallets.v1.debitWallet({
    id: wallet.id,
    debitWalletRequest: { amount: { asset: "USD/2", amount: 10_000n }, metadata: {} },
  }),
  (err) => err.errorCode === "INSUFFICIENT_FUND",
);
await assert.rejects(
  sdk.wallets.v1.creditWallet({
    id: wallet.id,
    creditWalletRequest: { amount: { asset: "not an asset", amount: 1n }, metadata: {} },
  }),
  (err) => err.errorCode === "VALIDATION",
);
await sdk.wallets.v1.updateWallet({ id: wallet.id, requestBody: { metadata: { plan: "pro" } } });
const fetched = (await sdk.wallets.v1.getWallet({ id: wallet.id })).getWalletResponse.data;
assert.equal(fetched.metadata.plan, "pro");
const listedWallets = await sdk.wallets.v1.listWallets({ name: `w-${ledger}` });
assert.deepEqual(listedWallets.listWalletsResponse.cursor.data.map((w) => w.id), [wallet.id]);
const ledgerServer = await sdk.ledger.v2.getInfo();
assert.ok(ledgerServer.v2ConfigInfo.version.length > 0);
const walletsServer = await sdk.wallets.v1.getServerInfoWallets();
assert.ok(walletsServer.serverInfo.version.length > 0);
// Export, then import into a new ledger: the same transactions.
const exported = await sdk.ledger.v2.exportLogs({ ledger });
assert.equal(exported.statusCode, 200);
// The SDK reads the export's body itself and keeps none of it: fetched again, as a client would.
const raw = await fetch(`${process.env.COFFER_URL}/api/ledger/v2/${ledger}/logs/export`, { method: "POST" });
const ndjson = new Uint8Array(await raw.arrayBuffer());
const copy = `${ledger}-copy`;
await sdk.ledger.v2.createLedger({ ledger: copy, v2CreateLedgerRequest: {} });
await sdk.ledger.v2.importLogs({ ledger: copy, v2ImportLogsRequest: ndjson });
const copied = await sdk.ledger.v2.countTransactions({ ledger: copy, query: {} });
assert.equal(copied.headers["count"][0], "4");
console.log("typescript sdk: ok");
