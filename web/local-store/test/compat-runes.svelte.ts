// A consumer of the compat hooks, as a component would be: effects that read them.
import type { CompatStore } from '../src/compat/index.ts';
import { useLiveQuery, useLiveQueryWithDefault, useSyncStatus } from '../src/compat/svelte.svelte.ts';

export function follow(store: CompatStore, fail: () => boolean) {
  const tasks = store.collection<{ id: string; title: string; done: boolean }>('tasks');
  const titles = useLiveQuery(async () => (await tasks.getAll({}, { sortBy: 'title' })).map((t) => t.title));
  const open = useLiveQueryWithDefault(() => tasks.count({ done: false }), -1);
  const failing = useLiveQuery(async () => {
    const count = await tasks.count();
    if (fail()) throw new Error(`refused after ${count}`);
    return count;
  });
  const sync = useSyncStatus(store);
  const seen = {
    titles: undefined as string[] | undefined,
    loading: true,
    open: 0,
    failing: { loading: true, error: undefined as unknown },
    status: '',
    isSyncing: false,
    stop: () => {},
  };
  seen.stop = $effect.root(() => {
    $effect(() => {
      seen.titles = titles.value;
      seen.loading = titles.loading;
    });
    $effect(() => {
      seen.open = open.value;
    });
    $effect(() => {
      seen.failing = { loading: failing.loading, error: failing.error };
    });
    $effect(() => {
      seen.status = sync.status;
      seen.isSyncing = sync.isSyncing;
    });
  });
  return seen;
}
