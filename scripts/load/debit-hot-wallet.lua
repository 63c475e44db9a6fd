-- wrk script: debits of 1 USD/2 cent from one wallet (WALLET_ID), to the world.
-- Usage: see scripts/load/run.
local wallet = os.getenv("WALLET_ID")
wrk.method = "POST"
wrk.path = "/api/wallets/wallets/" .. wallet .. "/debit"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"amount":{"asset":"USD/2","amount":1},"metadata":{}}'
-- No response() callback: it would make wrk hand every response to Lua. wrk itself counts
-- and reports "Non-2xx or 3xx responses", which scripts/load/run turns into a failure.

-- Finer percentiles at the end (scripts/load/run runs wrk from the repository root).
dofile("scripts/load/percentiles.lua")
