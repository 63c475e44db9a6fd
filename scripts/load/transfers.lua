-- wrk script: ledger transfers of 1 USD between random accounts among ACCOUNTS (default 10000),
-- each funded beforehand by scripts/load/run.
local accounts = tonumber(os.getenv("ACCOUNTS") or "10000")
local ledger = os.getenv("LEDGER") or "load"
local counter = 0

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

function request()
  local source = math.random(0, accounts - 1)
  local destination = math.random(0, accounts - 2)
  if destination >= source then destination = destination + 1 end
  local body = string.format(
    '{"postings":[{"source":"load:%d","destination":"load:%d","amount":1,"asset":"USD"}],"metadata":{}}',
    source, destination)
  return wrk.format("POST", "/api/ledger/v2/" .. ledger .. "/transactions",
    {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status ~= 200 then
    print("unexpected status " .. status .. ": " .. body)
  end
end
