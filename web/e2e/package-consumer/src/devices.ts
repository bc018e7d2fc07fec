/**
 * Two devices of one user: each a store on its own IndexedDB database
 * (fake-indexeddb, which `node --import fake-indexeddb/auto` installs before
 * any module loads, as a browser has it before the app's), signed in to the
 * server.
 */

import { LocalStore } from '@mana-sync/local-store';

/** A setting of the test, from the environment. */
function setting(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

export const SERVER = setting('MANA_SYNC_URL');
const TOKEN = setting('MANA_SYNC_TOKEN');

let count = 0;

/** A new device of the token's user, signed in to the server. */
export async function device(): Promise<LocalStore> {
  count += 1;
  const store = await LocalStore.open({ appId: 'todo', collections: ['tasks'], name: `device-${count}-${Date.now()}` });
  await store.signIn(SERVER, TOKEN);
  return store;
}

/** Resolves when `check` holds, or rejects after `ms`. */
export function within<T>(ms: number, what: string, wait: (resolve: (value: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    wait((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}
