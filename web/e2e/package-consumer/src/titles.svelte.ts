/** A Svelte 5 reactive query, followed by an effect as a component's template would. */

import type { LocalStore } from '@mana-sync/local-store';
import { liveQuery } from '@mana-sync/local-store/svelte';

/** Calls `seen` with the tasks' titles now and after every change; returns the function that stops it. */
export function watchTitles(store: LocalStore, seen: (titles: string[]) => void): () => void {
  return $effect.root(() => {
    const tasks = liveQuery(store, { collection: 'tasks', orderBy: 'title' });
    $effect(() => seen(tasks.current.map((task) => String(task.title))));
  });
}
