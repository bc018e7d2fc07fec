/**
 * Sign-in for the compat mode, as an app on the seed package has it: the app
 * keeps who is signed in, and hands the store a `getAuthToken` function. In
 * dev mode (the only auth this mode offers) a token comes from
 * `POST /dev/token`; the last one is kept, so the app still starts syncing
 * when that request fails.
 */

import { devToken } from '../lib/devToken.ts';

const USER = 'mana-todo-compat.user';
const TOKEN = 'mana-todo-compat.token';

/** Who signed in on this browser, if anyone. */
export function signedInUser(): string | null {
  return localStorage.getItem(USER);
}

/** Signs `user` in (the server must be in dev mode) and returns their `getAuthToken`. */
export async function signIn(server: string, user: string): Promise<() => Promise<string | null>> {
  localStorage.setItem(TOKEN, await devToken(server, user));
  localStorage.setItem(USER, user);
  return tokens(server, user);
}

/** `getAuthToken` for `user`: a fresh token, or the last one when none can be had. */
export function tokens(server: string, user: string): () => Promise<string | null> {
  return async () => {
    try {
      localStorage.setItem(TOKEN, await devToken(server, user));
    } catch (error) {
      console.warn('no new token; using the last one', error);
    }
    return localStorage.getItem(TOKEN);
  };
}

/** Forgets who signed in. */
export function signOut(): void {
  localStorage.removeItem(USER);
  localStorage.removeItem(TOKEN);
}
