// src/lib/store.ts
import { LocalStore, startSync } from '@mana-sync/local-store';

export const store = await LocalStore.open({ appId: 'todo', collections: ['tasks'] });
startSync(store); // syncs whenever the store is signed in, from one tab of the browser
// After your sign-in: a guest's records become the token user's, and sync starts.
export const signIn = (token: string) => store.signIn('https://sync.example.com', token);
