import './app.css';

import { LocalStore, startSync } from '@mana-sync/local-store';
import { mount } from 'svelte';

import App from './App.svelte';
import { APP_ID, TASKS, onboarding } from './todos.ts';

/** The sync server: the one serving the app, unless the build named another. */
const server = import.meta.env.VITE_MANA_SYNC_URL || window.location.origin;
const target = document.getElementById('app')!;

try {
  const store = await LocalStore.open({ appId: APP_ID, collections: [TASKS], seed: onboarding() });
  const sync = startSync(store);
  // For the browser console: `manaTodo.store.list('tasks')`.
  Object.assign(globalThis, { manaTodo: { store, sync } });
  mount(App, { target, props: { store, sync, server } });
} catch (error) {
  target.textContent = `The todo list cannot be opened in this browser: ${String(error)}`;
  target.className = 'fatal';
}
