import { svelte } from '@sveltejs/vite-plugin-svelte';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  // Compiles the `.svelte.ts` runes module for the Svelte tests.
  plugins: [svelte({ configFile: false })],
  test: {
    setupFiles: ['test/setup.ts'],
    projects: [
      {
        extends: true,
        test: { name: 'unit', include: ['test/**/*.test.ts'], exclude: ['test/**/*.svelte.test.ts'], environment: 'node' },
      },
      {
        // Svelte's client runtime and client compilation (effects run), in Node.
        extends: true,
        resolve: { conditions: ['browser'] },
        test: {
          name: 'svelte',
          include: ['test/**/*.svelte.test.ts'],
          environment: './test/client-environment.ts',
          server: { deps: { inline: [/svelte/] } },
        },
      },
    ],
  },
});
