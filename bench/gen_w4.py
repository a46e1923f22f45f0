#!/usr/bin/env python3
"""Generates the issue #3 W4 store as bulk ndjson: PATIENTS Patients and OBSERVATIONS
Observations, derived from the official R4 examples (../shared/corpora/fhir-r4-examples).

usage: gen_w4.py CORPORA_DIR OUT_DIR [PATIENTS] [OBSERVATIONS]

Patients take Patient-example.json with a family name from a fixed list (so `family=` prefixes
match about 1 in 50 patients) and a birth date spread over 1930-2020; ids p0 … pN. Observations
cycle through the corpus's Observation examples that have a LOINC code and a Patient subject,
re-pointed at patient `p(i % PATIENTS)`, with ids o0 … oN. Also writes template-codes.txt (the
LOINC code of each template, in order) and families.txt. Deterministic (no randomness). Standard library only.
"""
import json
import os
import sys

FAMILIES = [
    "Abbott", "Baker", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ibrahim", "Jensen",
    "Kowalski", "Larsen", "Moreau", "Nakamura", "Okafor", "Petrov", "Quintero", "Rossi", "Schmidt", "Tanaka",
    "Ueda", "Varga", "Weber", "Xu", "Yilmaz", "Zhang", "Andersson", "Bianchi", "Costa", "Dimitrov",
    "Esposito", "Fernandez", "Gruber", "Horvath", "Ivanova", "Jovanovic", "Kim", "Lopez", "Muller", "Novak",
    "Olsen", "Popescu", "Quinn", "Romano", "Silva", "Takahashi", "Usman", "Virtanen", "Wojcik", "Young",
]


def main() -> int:
    corpora, out = sys.argv[1], sys.argv[2]
    patients = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
    observations = int(sys.argv[4]) if len(sys.argv) > 4 else 1_000_000
    os.makedirs(out, exist_ok=True)

    with open(os.path.join(corpora, "Patient", "Patient-example.json"), encoding="utf-8") as file:
        patient_template = json.load(file)
    for field in ("link", "managingOrganization", "generalPractitioner", "contact"):
        patient_template.pop(field, None)

    templates = []
    directory = os.path.join(corpora, "Observation")
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), encoding="utf-8") as file:
            observation = json.load(file)
        codings = observation.get("code", {}).get("coding", [])
        loinc = [coding["code"] for coding in codings if coding.get("system") == "http://loinc.org" and "code" in coding]
        subject = observation.get("subject", {}).get("reference", "")
        if not loinc or not subject.startswith("Patient/"):
            continue
        for field in ("hasMember", "derivedFrom", "related", "focus", "encounter", "specimen", "device", "basedOn", "partOf", "performer", "contained", "text"):
            observation.pop(field, None)
        templates.append((loinc[0], observation))
    if not templates:
        print("no usable Observation examples", file=sys.stderr)
        return 1

    with open(os.path.join(out, "1-patients.ndjson"), "w", encoding="utf-8") as file:
        for index in range(patients):
            patient = dict(patient_template)
            patient["id"] = f"p{index}"
            patient["name"] = [{"use": "official", "family": FAMILIES[index % len(FAMILIES)], "given": [f"Given{index}"]}]
            patient["birthDate"] = f"{1930 + index % 90}-{1 + index % 12:02d}-{1 + index % 28:02d}"
            patient["identifier"] = [{"system": "urn:w4:mrn", "value": f"MRN{index}"}]
            file.write(json.dumps(patient, separators=(",", ":")) + "\n")

    codes = sorted({code for code, _ in templates})
    with open(os.path.join(out, "2-observations.ndjson"), "w", encoding="utf-8") as file:
        for index in range(observations):
            _, template = templates[index % len(templates)]
            observation = dict(template)
            observation["id"] = f"o{index}"
            observation["subject"] = {"reference": f"Patient/p{index % patients}"}
            file.write(json.dumps(observation, separators=(",", ":")) + "\n")

    # The code of template i, in order: Observation o<i> has code templates[i % len] and subject
    # p<i % PATIENTS>, so a query can pick a pair that exists.
    with open(os.path.join(out, "template-codes.txt"), "w", encoding="utf-8") as file:
        file.write("\n".join(code for code, _ in templates) + "\n")
    with open(os.path.join(out, "families.txt"), "w", encoding="utf-8") as file:
        file.write("\n".join(FAMILIES) + "\n")
    print(f"{patients} patients, {observations} observations from {len(templates)} examples ({len(codes)} LOINC codes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
