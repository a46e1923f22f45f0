-- wrk script: GET [base]/Type/id for a random id per request, from IDS_FILE (one path per line,
-- e.g. /fhir/Patient/0b6c...; written by preload.py). Environment: IDS_FILE, BENCH_DIR.
local ids_file = assert(os.getenv("IDS_FILE"), "IDS_FILE is not set")
local paths = {}
for line in io.lines(ids_file) do
  if line ~= "" then paths[#paths + 1] = line end
end
assert(#paths > 0, "no ids in " .. ids_file)

dofile(assert(os.getenv("BENCH_DIR"), "BENCH_DIR is not set") .. "/report.lua")

function request()
  return wrk.format("GET", paths[math.random(#paths)], bench_headers)
end

