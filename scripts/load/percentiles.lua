-- wrk hook shared by the load scripts: once, at the end, finer percentiles than wrk's own table.
function done(summary, latency, requests)
  local parts = {}
  for _, p in ipairs({50, 90, 95, 98, 99, 99.5, 99.9}) do
    parts[#parts + 1] = string.format("p%g=%.2fms", p, latency:percentile(p) / 1000)
  end
  io.write("latency " .. table.concat(parts, " ") .. "\n")
end
