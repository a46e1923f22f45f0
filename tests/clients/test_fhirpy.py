"""A real FHIR client (fhirpy's SyncFHIRClient) against a running gateway.

Run by tests/clients/run.sh, which starts the gateway and sets FHIR_BASE (e.g.
http://127.0.0.1:PORT/fhir): create/read/update/delete, a transaction, and searches.
"""

import copy
import json
import os
from pathlib import Path

import pytest
import requests
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

REPO = Path(__file__).resolve().parents[2]
CORPORA = Path(os.environ.get("FHIR_GATEWAY_CORPORA", REPO.parent / "shared" / "corpora"))
FHIR_BASE = os.environ.get("FHIR_BASE")
AUTHORIZATION = f"Bearer {os.environ.get('FHIR_TOKEN', '')}"

pytestmark = pytest.mark.skipif(not FHIR_BASE, reason="FHIR_BASE is not set (tests/clients/run.sh sets it)")

TIMEOUT = 30


@pytest.fixture(scope="module")
def client() -> SyncFHIRClient:
    return SyncFHIRClient(FHIR_BASE, authorization=AUTHORIZATION, requests_config={"timeout": TIMEOUT})


@pytest.fixture(scope="module")
def example_patient() -> dict:
    path = CORPORA / "fhir-r4-examples" / "Patient" / "Patient-example.json"
    with path.open(encoding="utf-8") as file:
        return json.load(file)


def without_id(resource: dict) -> dict:
    """A copy without `id`, so that fhirpy's save() creates (POST) instead of updating (PUT)."""
    resource = copy.deepcopy(resource)
    resource.pop("id", None)
    return resource


def raw_get(path: str) -> requests.Response:
    return requests.get(f"{FHIR_BASE}/{path}", headers={"Accept": "application/fhir+json", "Authorization": AUTHORIZATION}, timeout=TIMEOUT)


def test_patient_create_read_update_delete(client: SyncFHIRClient, example_patient: dict) -> None:
    patient = client.resource("Patient", **without_id(example_patient))
    patient.save()  # POST: the server assigns the id
    assert patient.id and patient.id != example_patient["id"]
    assert patient["meta"]["versionId"] == "1"

    read = client.get("Patient", patient.id)
    assert read["resourceType"] == "Patient"
    assert read["id"] == patient.id
    assert read["name"] == example_patient["name"]
    assert read["birthDate"] == example_patient["birthDate"]
    assert read["meta"]["versionId"] == "1"
    assert read["meta"]["lastUpdated"]

    patient["active"] = False
    patient.save()  # PUT, with the id the server assigned
    assert patient["meta"]["versionId"] == "2"

    read = client.get("Patient", patient.id)
    assert read["meta"]["versionId"] == "2"
    assert read["active"] is False
    assert read["name"] == example_patient["name"]
    assert read["birthDate"] == example_patient["birthDate"]

    version_one = client.execute(f"Patient/{patient.id}/_history/1", method="get")  # vread
    assert version_one["meta"]["versionId"] == "1"
    assert version_one["active"] is True

    patient.delete()
    with pytest.raises(ResourceNotFound):
        client.get("Patient", patient.id)
    gone = raw_get(f"Patient/{patient.id}")
    assert gone.status_code == 410, gone.text
    assert gone.headers["content-type"].startswith("application/fhir+json")
    assert gone.json()["resourceType"] == "OperationOutcome"


def test_observation_decimal_keeps_its_precision(client: SyncFHIRClient, example_patient: dict) -> None:
    subject = client.resource("Patient", **without_id(example_patient))
    subject.save()
    # Sent as raw text: a Python float would turn 37.50 into 37.5 before it left the client.
    body = (
        '{"resourceType":"Observation","status":"final",'
        '"code":{"coding":[{"system":"http://loinc.org","code":"8310-5","display":"Body temperature"}]},'
        f'"subject":{{"reference":"Patient/{subject.id}"}},'
        '"valueQuantity":{"value":37.50,"unit":"C","system":"http://unitsofmeasure.org","code":"Cel"}}'
    )
    created = requests.post(
        f"{FHIR_BASE}/Observation",
        data=body.encode("utf-8"),
        headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json", "Authorization": AUTHORIZATION},
        timeout=TIMEOUT,
    )
    assert created.status_code == 201, created.text
    observation_id = created.json()["id"]

    raw = raw_get(f"Observation/{observation_id}")
    assert raw.status_code == 200, raw.text
    assert '"value":37.50' in raw.text.replace(" ", ""), raw.text

    read = client.get("Observation", observation_id)
    assert read["meta"]["versionId"] == "1"
    assert read["subject"]["reference"] == f"Patient/{subject.id}"
    assert read["valueQuantity"]["code"] == "Cel"


def test_transaction_then_search(client: SyncFHIRClient) -> None:
    """A transaction Bundle through fhirpy's execute(), then searches with fhirpy's search sets."""
    marker = "Transactionson"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": {"resourceType": "Patient", "name": [{"family": marker}], "gender": "female", "birthDate": "1971-04-02"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},
                    "valueQuantity": {"value": 72, "unit": "/min"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    response = client.execute("", method="post", data=bundle)
    assert response["type"] == "transaction-response"
    assert [entry["response"]["status"] for entry in response["entry"]] == ["201 Created", "201 Created"]

    patients = client.resources("Patient").search(family=marker.lower()[:6]).fetch_all()
    assert len(patients) == 1
    patient = patients[0]
    assert patient["birthDate"] == "1971-04-02"
    # (fhirpy's count() adds Aidbox's _totalMethod, which this server refuses as unknown by default.)
    assert len(client.resources("Patient").search(family=marker, birthdate__ge="1971-01-01").fetch_all()) == 1
    assert len(client.resources("Patient").search(family=marker, birthdate__lt="1971-01-01").fetch_all()) == 0

    observations = client.resources("Observation").search(patient=patient["id"], code="http://loinc.org|8867-4").fetch_all()
    assert len(observations) == 1
    assert observations[0]["subject"]["reference"] == f"Patient/{patient['id']}"
    with_patient = client.resources("Observation").search(patient=patient["id"]).include("Observation", "subject").fetch_raw()
    modes = sorted(entry["search"]["mode"] for entry in with_patient["entry"])
    assert modes == ["include", "match"]
