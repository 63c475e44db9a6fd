-- wrk script: debits of 1 USD/2 cent from one wallet (WALLET_ID), to the world.
-- Usage: see scripts/load/run.
local wallet = os.getenv("WALLET_ID")
wrk.method = "POST"
wrk.path = "/api/wallets/wallets/" .. wallet .. "/debit"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"amount":{"asset":"USD/2","amount":1},"metadata":{}}'

function response(status, headers, body)
  if status ~= 204 then
    print("unexpected status " .. status .. ": " .. body)
  end
end
