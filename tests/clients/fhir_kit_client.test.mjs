// fhir-kit-client (npm) against a running gateway: a transaction, then reads and a search.
// Run by tests/clients/run.sh with FHIR_BASE set (e.g. http://127.0.0.1:PORT/fhir).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Client } from 'fhir-kit-client';

const baseUrl = process.env.FHIR_BASE;

test('transaction with urn:uuid references, read back and searched', async () => {
  assert.ok(baseUrl, 'FHIR_BASE must be set (tests/clients/run.sh sets it)');
  const client = new Client({ baseUrl, bearerToken: process.env.FHIR_TOKEN });
  const patientUrl = 'urn:uuid:0a7e3c2e-6c2f-4a51-9b3e-5a4f2a1b9d11';
  const response = await client.transaction({
    body: {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        {
          fullUrl: patientUrl,
          resource: { resourceType: 'Patient', name: [{ family: 'Kitclient' }], gender: 'male' },
          request: { method: 'POST', url: 'Patient' },
        },
        {
          resource: {
            resourceType: 'Observation',
            status: 'final',
            code: { coding: [{ system: 'http://loinc.org', code: '29463-7' }] },
            subject: { reference: patientUrl },
            valueQuantity: { value: 81.50, unit: 'kg' },
          },
          request: { method: 'POST', url: 'Observation' },
        },
      ],
    },
  });
  assert.equal(response.type, 'transaction-response');
  assert.deepEqual(response.entry.map((entry) => entry.response.status), ['201 Created', '201 Created']);
  const patientId = response.entry[0].resource.id;
  const observationId = response.entry[1].resource.id;

  const observation = await client.read({ resourceType: 'Observation', id: observationId });
  assert.equal(observation.subject.reference, `Patient/${patientId}`);
  const patient = await client.read({ resourceType: 'Patient', id: patientId });
  assert.equal(patient.meta.versionId, '1');

  const found = await client.search({ resourceType: 'Observation', searchParams: { patient: patientId, code: 'http://loinc.org|29463-7' } });
  assert.equal(found.total, 1);
  assert.equal(found.entry[0].resource.id, observationId);
});
