import { svelte } from '@sveltejs/vite-plugin-svelte';
import { defaultClientConditions, defineConfig, type Plugin } from 'vite';

/**
 * The sync server the built app talks to. Unset (the default): the server
 * that serves the app (`mana-sync serve`), i.e. the page's own origin.
 */
const syncServer = process.env.VITE_MANA_SYNC_URL ? new URL(process.env.VITE_MANA_SYNC_URL).origin : undefined;

/**
 * The Content-Security-Policy the app carries wherever it is hosted: its own
 * scripts and styles, and connections to exactly the sync server. When
 * `mana-sync serve` serves it, the server sends the same policy as a header
 * (`crates/server/src/routes/app.rs`).
 */
const policy = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  `connect-src 'self'${syncServer ? ` ${syncServer}` : ''}`,
  "img-src 'self' data:",
  "font-src 'self'",
  "object-src 'none'",
  "base-uri 'self'",
  "form-action 'self'",
].join('; ');

function contentSecurityPolicy(): Plugin {
  return {
    name: 'mana-todo-csp',
    apply: 'build',
    transformIndexHtml: () => [{ tag: 'meta', attrs: { 'http-equiv': 'Content-Security-Policy', content: policy }, injectTo: 'head-prepend' }],
  };
}

export default defineConfig({
  plugins: [svelte({ configFile: false }), contentSecurityPolicy()],
  // The workspace's @mana-sync/local-store as TypeScript source (its exports'
  // `@mana-sync/source` condition), compiled with the app: no build of the
  // package first, and its edits reload in `npm run dev`. Apps outside the
  // repository get the package's built `dist/` (the `default` condition).
  resolve: { conditions: ['@mana-sync/source', ...defaultClientConditions] },
  build: {
    target: 'es2022',
    sourcemap: true,
    // The app at `/`, and its compat mode (the seed package's API) at `/compat/`.
    rollupOptions: { input: { main: 'index.html', compat: 'compat/index.html' } },
  },
  // `npm run dev`: the app on Vite's dev server, the API proxied to a local
  // `mana-sync serve` (same origin for the app, so dev sign-in works).
  server: {
    proxy: Object.fromEntries(
      ['/sync', '/spaces', '/dev', '/health'].map((path) => [path, { target: process.env.MANA_SYNC_DEV_SERVER ?? 'http://127.0.0.1:3050' }]),
    ),
  },
});
