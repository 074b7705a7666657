// Drives the emulator with the official podio-js SDK: authenticate,
// page, create, update, read by external_id, upload a file. The Go test
// TestOfficialSDK starts the emulator and runs this with node --test.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const Podio = require('podio-js').api;

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set; run this through the Go test TestOfficialSDK`);
  return v;
};
const apiURL = env('PODIO_EMU_URL');
const appId = Number(env('PODIO_EMU_APP_ID'));

function client() {
  return new Podio({ authType: 'server', clientId: env('PODIO_EMU_CLIENT_ID'), clientSecret: env('PODIO_EMU_CLIENT_SECRET') }, { apiURL });
}

function appAuth(podio) {
  return new Promise((resolve, reject) => {
    podio.authenticateWithApp(appId, env('PODIO_EMU_APP_TOKEN'), (err) => (err ? reject(err) : resolve()));
  });
}

test('authenticate, page, create, update and read by external_id', async () => {
  const podio = client();
  await appAuth(podio);

  // Page through the seeded items in item_id order.
  const seen = [];
  for (let offset = 0; ; offset += 2) {
    const page = await podio.request('POST', `/item/app/${appId}/filter/`, { limit: 2, offset, sort_by: 'item_id', sort_desc: false });
    assert.strictEqual(page.total, 5);
    seen.push(...page.items.map((it) => it.item_id));
    if (page.items.length < 2) break;
  }
  assert.strictEqual(seen.length, 5);
  assert.deepStrictEqual([...seen].sort((a, b) => a - b), seen);

  const created = await podio.request('POST', `/item/app/${appId}/`, { external_id: 'sdk-1', fields: { title: 'made by podio-js' } });
  assert.ok(created.item_id > 0);
  await podio.request('PUT', `/item/${created.item_id}`, { fields: { title: 'changed by podio-js' } });
  const byExt = await podio.request('GET', `/item/app/${appId}/external_id/sdk-1`);
  assert.strictEqual(byExt.item_id, created.item_id);
  assert.strictEqual(byExt.fields.find((f) => f.external_id === 'title').values[0].value, 'changed by podio-js');

  // An unknown route is a 404, not a create.
  await assert.rejects(podio.request('POST', `/item/app/${appId}/delete`, { fields: { title: 'x' } }), (e) => e.status === 404);
  const count = await podio.request('GET', `/item/app/${appId}/count`);
  assert.strictEqual(count.count, 6);
});

test('password flow and file upload', async () => {
  const podio = client();
  await new Promise((resolve, reject) => {
    podio.authenticateWithCredentials(env('PODIO_EMU_USERNAME'), env('PODIO_EMU_PASSWORD'), (err) => (err ? reject(err) : resolve()));
  });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'podioemu-sdk-'));
  const file = path.join(dir, 'hello.txt');
  fs.writeFileSync(file, 'hello from podio-js\n');
  try {
    const up = await podio.uploadFile(file, 'hello.txt');
    assert.ok(up.file_id > 0);
    assert.strictEqual(up.name, 'hello.txt');
    assert.strictEqual(up.size, 20);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
