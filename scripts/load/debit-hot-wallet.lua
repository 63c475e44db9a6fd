-- wrk script: debits of 1 USD/2 cent from one wallet (WALLET_ID), to the world.
-- Usage: see scripts/load/run.
local wallet = os.getenv("WALLET_ID")
wrk.method = "POST"
wrk.path = "/api/wallets/wallets/" .. wallet .. "/debit"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"amount":{"asset":"USD/2","amount":1},"metadata":{}}'
-- No response() callback: it would make wrk hand every response to Lua. wrk itself counts
-- and reports "Non-2xx or 3xx responses", which scripts/load/run turns into a failure.

-- Once, at the end: finer percentiles than wrk's own table.
function done(summary, latency, requests)
  local parts = {}
  for _, p in ipairs({50, 90, 95, 98, 99, 99.5, 99.9}) do
    parts[#parts + 1] = string.format("p%g=%.2fms", p, latency:percentile(p) / 1000)
  end
  io.write("latency " .. table.concat(parts, " ") .. "\n")
end
