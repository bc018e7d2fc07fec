import { LocalStore } from '../src/store.ts';
import { createLocalStore, type LocalStoreConfig } from '../src/compat/index.ts';
import type { StoreOptions } from '../src/types.ts';

let counter = 0;

/** A fresh store on its own (fake) IndexedDB database. */
export async function freshStore(options: Partial<StoreOptions> = {}): Promise<LocalStore> {
  counter += 1;
  return LocalStore.open({ appId: 'todo', collections: ['tasks'], name: `test-${counter}-${Math.random()}`, ...options });
}

/**
 * A compat store (not initialized) of an app of its own, so that its
 * database (`mana-sync.<appId>`) and the seed's (`manacore-<appId>`) are
 * the test's alone.
 */
export function compatStore(config: Partial<LocalStoreConfig> = {}) {
  counter += 1;
  return createLocalStore({ appId: `compat-${counter}`, collections: [{ name: 'tasks' }], ...config });
}

/** A second handle on the same database (another tab). */
export function sameDatabase(store: LocalStore, options: Partial<StoreOptions> = {}): Promise<LocalStore> {
  return LocalStore.open({ appId: store.appId, collections: [...store.collections], name: store.db.name, ...options });
}

/** An unsigned JWT for `sub` (the client only reads `sub`; the server verifies); `claims` make tokens of one user differ. */
export function token(sub: string, claims: object = {}): string {
  const encode = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode({ sub, exp: 4102444800, ...claims })}.signature`;
}

/** A manual physical clock. */
export function manualClock(start: number) {
  let now = start;
  return {
    now: () => now,
    set(millis: number) {
      now = millis;
    },
  };
}

export const NOW = Date.UTC(2026, 10, 25, 10, 0, 0, 123); // 2026-11-25T10:00:00.123Z
