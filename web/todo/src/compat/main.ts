/**
 * The Todo app's compat mode, at `/compat/`: the same todos (app `todo`,
 * collection `tasks`), written only against the seed package's API as
 * `@mana-sync/local-store/compat` provides it, the way an app switched from
 * `@manacore/local-store` looks.
 */

import '../app.css';

import { createLocalStore } from '@mana-sync/local-store/compat';
import { mount } from 'svelte';

import App from './App.svelte';
import { signedInUser, tokens } from './auth.ts';

/** The sync server: the one serving the app, unless the build named another. */
const server = import.meta.env.VITE_MANA_SYNC_URL || window.location.origin;
const target = document.getElementById('app')!;

const store = createLocalStore({
  appId: 'todo',
  collections: [
    {
      name: 'tasks',
      // A fixed id and createdAt: every browser seeds the same record, sorted first.
      guestSeed: [{ id: 'compat-onboarding-1', title: 'This list runs on the seed package’s API', done: false, createdAt: '1970-01-01T00:00:00.201Z' }],
    },
  ],
  sync: { serverUrl: server },
});

try {
  await store.initialize();
  const user = signedInUser();
  // For the browser console and the end-to-end tests.
  Object.assign(globalThis, { manaCompat: { store } });
  mount(App, { target, props: { store, server, user } });
  if (user) await store.startSync(tokens(server, user));
} catch (error) {
  target.textContent = `The todo list cannot be opened in this browser: ${String(error)}`;
  target.className = 'fatal';
}
