-- wrk script: issue #3's W1 as the Blaze load test shapes it, one transaction per request: a small
-- Patient (gender, a random birth date 1920-2020) and an Observation (final, LOINC 8480-6
-- systolic blood pressure, a random mm[Hg] value 90-180) whose subject is the Patient's
-- urn:uuid, fresh urn:uuids each time. Environment: BENCH_DIR, BENCH_TOKEN (empty: no
-- Authorization header), BASE_PATH (default /fhir).
dofile(assert(os.getenv("BENCH_DIR"), "BENCH_DIR is not set") .. "/report.lua")

local base_path = os.getenv("BASE_PATH") or "/fhir"
local path = base_path == "" and "/" or base_path
local headers = {}
for name, value in pairs(bench_headers) do
  headers[name] = value
end
headers["Content-Type"] = "application/fhir+json"

local function uuid()
  return string.format("%08x-%04x-4%03x-%04x-%012x", math.random(0, 0xffffffff), math.random(0, 0xffff),
    math.random(0, 0xfff), 0x8000 + math.random(0, 0x3fff), math.random(0, 0xffffffffffff))
end

local template = '{"resourceType":"Bundle","type":"transaction","entry":['
  .. '{"fullUrl":"urn:uuid:%s","resource":{"resourceType":"Patient","gender":"male","birthDate":"%04d-%02d-%02d"},'
  .. '"request":{"method":"POST","url":"Patient"}},'
  .. '{"fullUrl":"urn:uuid:%s","resource":{"resourceType":"Observation","status":"final",'
  .. '"subject":{"reference":"urn:uuid:%s"},"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},'
  .. '"valueQuantity":{"value":%d,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},'
  .. '"request":{"method":"POST","url":"Observation"}}]}'

function request()
  local patient = uuid()
  local body = string.format(template, patient, math.random(1920, 2020), math.random(1, 12), math.random(1, 28),
    uuid(), patient, math.random(90, 180))
  return wrk.format("POST", path, headers, body)
end
