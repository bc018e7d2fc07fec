// Bundled as an app's bundler would, the Svelte plugin compiling this
// project's Svelte code and the package's `/svelte` entry: the Svelte test
// (run by Node), and the README's integration (compiled, not run).
import { svelte } from '@sveltejs/vite-plugin-svelte';
import { defineConfig } from 'vite';

export default defineConfig({
  plugins: [svelte({ configFile: false })],
  build: {
    target: 'es2022',
    minify: false,
    lib: { entry: { 'live.test': 'src/live.test.ts', todos: 'app/Todos.svelte' }, formats: ['es'] },
    // Node's own modules stay imports; everything else is bundled.
    rollupOptions: { external: [/^node:/] },
  },
});
