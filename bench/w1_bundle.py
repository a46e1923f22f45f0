#!/usr/bin/env python3
"""Writes a transaction Bundle in issue #3's W1 shape from two given resources: one Patient and
one Observation whose subject is the Patient's urn:uuid, both POSTed (the "transaction"
scenario of bench/run.sh and bench/vs_hfs.sh; W1 itself, with the Blaze load test's small
resources and fresh values per request, is bench/w1.lua).

usage: w1_bundle.py PATIENT.json OBSERVATION.json OUT.json
Ids are dropped (the server assigns them). Standard library only.
"""
import json
import sys


def main() -> int:
    patient_file, observation_file, out_file = sys.argv[1:4]
    patient, observation = (json.load(open(path)) for path in (patient_file, observation_file))
    for resource in (patient, observation):
        resource.pop("id", None)
    full_url = "urn:uuid:6f1c2f0e-8a7b-4c1d-9a55-0e2d6b3f7a10"
    observation["subject"] = {"reference": full_url}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": full_url, "resource": patient, "request": {"method": "POST", "url": "Patient"}},
        {"resource": observation, "request": {"method": "POST", "url": "Observation"}},
    ]}
    with open(out_file, "w") as file:
        json.dump(bundle, file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
