-- wrk script for issue #3 W4 (bench/w4.sh): a search per request on the store gen_w4.py made.
-- Environment: W4_QUERY=observation (Observation?patient=X&code=Y, a pair that exists) or
-- patient (Patient?family=<3-5 letter prefix>&birthdate=ge<year>; patient-total-none adds
-- _total=none), W4_DIR (gen_w4.py's output),
-- W4_PATIENTS, W4_OBSERVATIONS, BENCH_TOKEN, BENCH_DIR.
local dir = assert(os.getenv("W4_DIR"), "W4_DIR is not set")
local query = assert(os.getenv("W4_QUERY"), "W4_QUERY is not set")
local patients = tonumber((assert(os.getenv("W4_PATIENTS"), "W4_PATIENTS is not set")))
local observations = tonumber((assert(os.getenv("W4_OBSERVATIONS"), "W4_OBSERVATIONS is not set")))
local codes, families = {}, {}
for line in io.lines(dir .. "/template-codes.txt") do
  if line ~= "" then codes[#codes + 1] = line end
end
for line in io.lines(dir .. "/families.txt") do
  if line ~= "" then families[#families + 1] = line end
end

dofile(assert(os.getenv("BENCH_DIR"), "BENCH_DIR is not set") .. "/report.lua")

function request()
  local path
  if query == "read" then
    local i = math.random(0, patients + observations - 1)
    if i < patients then
      path = string.format("/fhir/Patient/p%d", i)
    else
      path = string.format("/fhir/Observation/o%d", i - patients)
    end
  elseif query == "observation" then
    local i = math.random(0, observations - 1)
    path = string.format("/fhir/Observation?patient=p%d&code=http://loinc.org%%7C%s", i % patients, codes[(i % #codes) + 1])
  else
    local family = families[math.random(#families)]
    local prefix = string.sub(family, 1, math.random(3, math.min(5, #family)))
    path = string.format("/fhir/Patient?family=%s&birthdate=ge%d-01-01", prefix, math.random(1930, 2019))
    if query == "patient-total-none" then path = path .. "&_total=none" end
  end
  return wrk.format("GET", path, bench_headers)
end

