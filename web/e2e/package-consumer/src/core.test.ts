/** The core entry in plain Node (its `exports` resolved by Node itself): one device writes, another receives it. */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { SyncClient, type StoredRecord, type SyncReport } from '@mana-sync/local-store';

import { device } from './devices.js';

test('a write on one device reaches another through the server', async () => {
  const phone = await device();
  const laptop = await device();
  const account = await phone.account();
  assert.ok(account);

  const id = await phone.insert('tasks', { title: 'Oat milk', done: false });
  const pushed: SyncReport = await new SyncClient(phone, account).sync();
  assert.equal(pushed.pushed, 1);
  assert.equal(await phone.pendingCount(), 0);

  const laptopAccount = await laptop.account();
  assert.ok(laptopAccount);
  const pulled = await new SyncClient(laptop, laptopAccount).sync();
  assert.ok(pulled.received >= 1);
  const record: StoredRecord | undefined = await laptop.get('tasks', id);
  assert.deepEqual(record, { id, title: 'Oat milk', done: false });
  assert.equal((await laptop.status()).kind, 'synced');

  phone.close();
  laptop.close();
});
