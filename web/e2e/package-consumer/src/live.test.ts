/**
 * The `/svelte` entry compiled by the consumer's Svelte plugin (this file is
 * bundled by Vite): a live query on one device shows another device's write,
 * delivered by the live stream.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { SyncClient, startSync } from '@mana-sync/local-store';

import { device, within } from './devices.js';
import { watchTitles } from './titles.svelte.js';

test('a Svelte live query shows what another device wrote, live', async () => {
  const phone = await device();
  const laptop = await device();
  const syncing = startSync(laptop);

  let stop = () => {};
  const shown = within<string[]>(15_000, 'the laptop to show the phone’s todo', (resolve) => {
    stop = watchTitles(laptop, (titles) => {
      if (titles.includes('Bread')) resolve(titles);
    });
  });
  // The live stream is open once the laptop says it is synced.
  await within<void>(15_000, 'the laptop to sync', (resolve) => {
    const subscription = laptop.live((store) => store.status()).subscribe((status) => {
      if (status.kind === 'synced') {
        subscription.unsubscribe();
        resolve();
      }
    });
  });

  await phone.insert('tasks', { title: 'Bread', done: false });
  const account = await phone.account();
  assert.ok(account);
  assert.equal((await new SyncClient(phone, account).sync()).pushed, 1);
  assert.ok((await shown).includes('Bread'));

  stop();
  await syncing.stop();
  phone.close();
  laptop.close();
});
