// A consumer of the runes module, as a component would be: effects that read `current`.
import { liveQuery, liveStatus } from '../src/svelte.svelte.ts';
import type { LocalStore } from '../src/store.ts';

export function follow(store: LocalStore) {
  const todos = liveQuery(store, { collection: 'tasks', orderBy: 'title' });
  const status = liveStatus(store);
  const seen = { titles: [] as string[], status: '', stop: () => {} };
  seen.stop = $effect.root(() => {
    $effect(() => {
      seen.titles = todos.current.map((t) => String(t.title));
    });
    $effect(() => {
      seen.status = status.current.kind;
    });
  });
  return seen;
}
