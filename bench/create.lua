-- wrk script: POST the same FHIR resource over and over (every POST is a new resource with a
-- server-assigned id). Environment: RESOURCE_TYPE (e.g. Patient), BODY_FILE (a JSON resource),
-- BENCH_DIR (this directory), PREFER (optional Prefer header, e.g. return=minimal), BENCH_TOKEN
-- (a bearer token; empty: no Authorization header, for servers without authorization).
-- RESOURCE_TYPE empty: POST to the base (a transaction Bundle in BODY_FILE).
local resource_type = assert(os.getenv("RESOURCE_TYPE"), "RESOURCE_TYPE is not set")
local body_file = assert(os.getenv("BODY_FILE"), "BODY_FILE is not set")
local file = assert(io.open(body_file, "rb"))
local body = file:read("*a")
file:close()

wrk.method = "POST"
-- BASE_PATH: the FHIR base's path on the server (default /fhir; bench/vs_hfs.sh sets "" for HFS).
local base_path = os.getenv("BASE_PATH") or "/fhir"
wrk.path = resource_type == "" and (base_path == "" and "/" or base_path) or (base_path .. "/" .. resource_type)
wrk.body = body
wrk.headers["Content-Type"] = "application/fhir+json"
wrk.headers["Accept"] = "application/fhir+json"
local token = assert(os.getenv("BENCH_TOKEN"), "BENCH_TOKEN is not set")
if token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
local prefer = os.getenv("PREFER")
if prefer and prefer ~= "" then
  wrk.headers["Prefer"] = prefer
end

dofile(assert(os.getenv("BENCH_DIR"), "BENCH_DIR is not set") .. "/report.lua")
