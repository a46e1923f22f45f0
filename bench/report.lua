-- Shared by the wrk scripts (create.lua, read.lua, w4.lua): a different random sequence per wrk
-- thread, the request headers with the bearer token (BENCH_TOKEN), and after the run one
-- machine-readable line that bench/run.sh and bench/w4.sh parse (latency in microseconds, as
-- wrk measures it).
local next_seed = 1
function setup(thread)
  thread:set("seed", next_seed)
  next_seed = next_seed + 1
end

function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
end

bench_headers = {
  ["Accept"] = "application/fhir+json",
}
-- An empty token: no Authorization header (another server without authorization, bench/vs_hfs.sh).
local bench_token = assert(os.getenv("BENCH_TOKEN"), "BENCH_TOKEN is not set")
if bench_token ~= "" then
  bench_headers["Authorization"] = "Bearer " .. bench_token
end

-- errors.status is wrk's count of responses with status > 399.
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "status_errors=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    errors.status, errors.connect, errors.read, errors.write, errors.timeout))
end
