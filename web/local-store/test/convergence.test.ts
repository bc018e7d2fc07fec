/**
 * Convergence: three devices of one user with wrong clocks (ahead, behind,
 * stalled) edit the same few records in random orders and sync at random
 * moments. After everyone has synced, every device holds the same state, and
 * that state is the merge of the server's whole log.
 */

import { describe, expect, it } from 'vitest';

import { applyChange, emptyState, readChange, stateToJson, type RecordState } from '../src/merge.ts';
import type { LocalStore } from '../src/store.ts';
import { SyncClient } from '../src/sync.ts';
import { FakeServer } from './fake-server.ts';
import { NOW, freshStore, manualClock, token } from './helpers.ts';

/** A small deterministic PRNG (mulberry32). */
function random(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (n: number) => Math.floor(next() * n), pick: <T>(items: T[]) => items[Math.floor(next() * items.length)]! };
}

function snapshot(states: Map<string, RecordState>): string {
  return JSON.stringify([...states.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([key, state]) => [key, stateToJson(state)]));
}

describe('convergence', () => {
  for (const seed of [1, 7, 42, 1234, 99999]) {
    it(`three devices with skewed clocks converge to the merge of the log (seed ${seed})`, async () => {
      const rng = random(seed);
      const server = new FakeServer();
      const devices: { store: LocalStore; sync: SyncClient; clock: ReturnType<typeof manualClock> }[] = [];
      for (const skew of [2 * 60_000, -3 * 60_000, 0]) {
        const clock = manualClock(NOW + skew);
        const store = await freshStore({ now: clock.now, actor: { device: devices.length } });
        const account = await store.signIn('http://sync.test', token('alice'));
        devices.push({ store, sync: new SyncClient(store, account, { fetch: server.fetch }), clock });
      }
      const ids = ['t0', 't1', 't2', 't3'];
      for (let step = 0; step < 120; step++) {
        const device = rng.pick(devices);
        const id = rng.pick(ids);
        const existing = await device.store.get('tasks', id);
        switch (rng.int(6)) {
          case 0:
            if (!existing && !(await device.store.recordState('tasks', id))) await device.store.insert('tasks', { id, title: `new ${step}`, done: false });
            break;
          case 1:
          case 2:
            if (existing) await device.store.update('tasks', id, rng.int(2) ? { title: `edit ${step}` } : { done: rng.int(2) === 1, rank: rng.int(3) });
            break;
          case 3:
            if (existing && rng.int(3) === 0) await device.store.delete('tasks', id);
            break;
          case 4:
            await device.sync.sync();
            break;
          default:
            // Clocks move on, stall, or step back.
            device.clock.set(device.clock.now() + rng.pick([0, 1, 5, 1000, -500]));
        }
      }
      for (let round = 0; round < 2; round++) for (const device of devices) await device.sync.sync();

      const dumps = await Promise.all(devices.map((d) => d.store.dump()));
      const expected = new Map<string, RecordState>();
      for (const entry of server.log) {
        const change = readChange(entry.change);
        const key = `${change.table}/${change.id}`;
        const state = expected.get(key) ?? emptyState();
        applyChange(state, change);
        expected.set(key, state);
      }
      for (const dump of dumps) expect(snapshot(dump)).toBe(snapshot(expected));
      for (const device of devices) expect(await device.store.pendingCount()).toBe(0);
      const lists = await Promise.all(devices.map((d) => d.store.list('tasks')));
      expect(lists[1]).toEqual(lists[0]);
      expect(lists[2]).toEqual(lists[0]);
    });
  }
});
