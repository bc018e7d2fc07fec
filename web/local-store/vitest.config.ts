import { svelte } from '@sveltejs/vite-plugin-svelte';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  // Compiles the `.svelte.ts` runes module for the Svelte tests.
  plugins: [svelte({ configFile: false })],
  // Svelte's client runtime (effects run), not its server one.
  resolve: { conditions: ['browser'] },
  test: {
    include: ['test/**/*.test.ts'],
    setupFiles: ['test/setup.ts'],
    environment: 'node',
  },
});
