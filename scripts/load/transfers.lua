-- wrk script: ledger transfers of 1 USD between random accounts among ACCOUNTS (default 10000),
-- each funded beforehand by scripts/load/run. Requests are formatted once, in init, and replayed
-- in turn, so that the load generator spends its CPU on sending rather than on Lua.
local accounts = tonumber(os.getenv("ACCOUNTS") or "10000")
local ledger = os.getenv("LEDGER") or "load"
local pool_size = 8192
local pool = {}
local next_index = 1

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  local path = "/api/ledger/v2/" .. ledger .. "/transactions"
  for i = 1, pool_size do
    local source = math.random(0, accounts - 1)
    local destination = math.random(0, accounts - 2)
    if destination >= source then destination = destination + 1 end
    local body = string.format(
      '{"postings":[{"source":"load:%d","destination":"load:%d","amount":1,"asset":"USD"}],"metadata":{}}',
      source, destination)
    pool[i] = wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
  end
end

function request()
  local r = pool[next_index]
  next_index = next_index % pool_size + 1
  return r
end
-- No response() callback: it would make wrk hand every response to Lua. wrk itself counts
-- and reports "Non-2xx or 3xx responses", which scripts/load/run turns into a failure.

-- Finer percentiles at the end (scripts/load/run runs wrk from the repository root).
dofile("scripts/load/percentiles.lua")
