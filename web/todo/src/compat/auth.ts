/**
 * Sign-in for the compat mode, as an app on the seed package has it: the app
 * keeps who is signed in, and hands the store a `getAuthToken` function. In
 * dev mode (the only auth this mode offers) a token comes from
 * `POST /dev/token`; the last one is kept, so the app still starts syncing
 * when that request fails.
 */

const USER = 'mana-todo-compat.user';
const TOKEN = 'mana-todo-compat.token';

/** Who signed in on this browser, if anyone. */
export function signedInUser(): string | null {
  return localStorage.getItem(USER);
}

async function mint(server: string, user: string): Promise<string> {
  const response = await fetch(`${server}/dev/token`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body?.error?.message ?? `the server answered ${response.status}`);
  return body.token;
}

/** Signs `user` in (the server must be in dev mode) and returns their `getAuthToken`. */
export async function signIn(server: string, user: string): Promise<() => Promise<string | null>> {
  localStorage.setItem(TOKEN, await mint(server, user));
  localStorage.setItem(USER, user);
  return tokens(server, user);
}

/** `getAuthToken` for `user`: a fresh token, or the last one when none can be had. */
export function tokens(server: string, user: string): () => Promise<string | null> {
  return async () => {
    try {
      localStorage.setItem(TOKEN, await mint(server, user));
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
