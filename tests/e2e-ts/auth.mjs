// The official TypeScript SDK with client credentials against two `coffer serve` processes that
// share a store, a clients file and a signing key (COFFER_URL, COFFER_OTHER_URL). Its hook posts
// to /api/auth/oauth/token (the SDK's default token URL) and sends the bearer token.
import assert from "node:assert/strict";
import { SDK } from "@formance/formance-sdk";

const client = (serverURL, clientID, clientSecret) =>
  new SDK({ serverURL, security: { clientID, clientSecret } });
const shop = client(process.env.COFFER_URL, "shop", process.env.COFFER_SHOP_SECRET);
const auditor = client(process.env.COFFER_OTHER_URL, "auditor", process.env.COFFER_AUDITOR_SECRET);
const ledger = `ts-auth-${process.pid}-${Date.now()}`;

await shop.ledger.v2.createLedger({ ledger, v2CreateLedgerRequest: {} });
const tx = (
  await shop.ledger.v2.createTransaction({
    ledger,
    v2PostTransaction: {
      postings: [{ source: "world", destination: "users:1", amount: 42n, asset: "USD/2" }],
      metadata: {},
    },
  })
).v2CreateTransactionResponse.data;
const wallet = (
  await shop.wallets.v1.createWallet({ createWalletRequest: { name: "bob", metadata: {} } })
).createWalletResponse.data;

// The read-only client reads through the other process, and gets no token to write.
const read = (await auditor.ledger.v2.getTransaction({ ledger, id: tx.id })).v2GetTransactionResponse.data;
assert.equal(read.postings[0].amount, 42n);
await assert.rejects(
  auditor.ledger.v2.addMetadataOnTransaction({ ledger, id: tx.id, requestBody: { k: "v" } }),
  /status code 400 while fetching token/,
);
await assert.rejects(auditor.wallets.v1.getWallet({ id: wallet.id }), /status code 400 while fetching token/);

// No credentials: an empty 401.
const anonymous = new SDK({ serverURL: process.env.COFFER_URL });
await assert.rejects(anonymous.ledger.v2.getTransaction({ ledger, id: tx.id }), (err) => {
  assert.equal(err.statusCode, 401, String(err));
  return true;
});
console.log("typescript auth: ok");
