/**
 * Node, with modules transformed as for the browser: the Svelte plugin then
 * compiles `.svelte.ts` modules for the client (effects run), not for
 * server-side rendering.
 */
import type { Environment } from 'vitest/environments';

export default {
  name: 'node-client',
  viteEnvironment: 'client',
  setup() {
    return { teardown() {} };
  },
} satisfies Environment;
