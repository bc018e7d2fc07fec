/**
 * The Todo app's data: app `todo`, collection `tasks`, a todo
 * `{id, title, done, createdAt}`: the same as `mana-todo`, so the terminal
 * pilot and the web app share one list. "My todos" are the user's personal
 * todos; a shared list is a shared space, and its todos are the records
 * in that space (`spaceId`).
 */

import type { LocalStore, Query, SeedRecord, StoredRecord } from '@mana-sync/local-store';

export const APP_ID = 'todo';
export const TASKS = 'tasks';

/** A todo as the app reads it. */
export interface Todo extends StoredRecord {
  title: string;
  done: boolean;
  createdAt: string;
}

/**
 * The onboarding todos of a new (guest) store. Their ids and fields are the
 * same in every browser, so the seeds of several devices of one account
 * merge into these three; they carry the lowest timestamp, so any real edit
 * wins over them.
 */
export function onboarding(): SeedRecord[] {
  return [
    'Welcome! Your todos live in this browser and work offline',
    'Tick a todo off, double-click one to rename it, × deletes it',
    'Sign in to sync your todos with your other devices',
  ].map((title, i) => ({
    collection: TASKS,
    id: `web-onboarding-${i + 1}`,
    // Fixed, so that every browser seeds the same record. They sort first, after
    // mana-todo's own onboarding todos (`…00.00N`), when one account uses both.
    data: { title, done: false, createdAt: `1970-01-01T00:00:00.10${i + 1}Z` },
  }));
}

/** Every todo of a list (`undefined`: My todos), oldest first. */
export function todosOf(spaceId: string | undefined): Query {
  return { collection: TASKS, orderBy: ['createdAt'], where: (record) => record.spaceId === spaceId };
}

export function asTodo(record: StoredRecord): Todo {
  return {
    ...record,
    title: typeof record.title === 'string' ? record.title : String(record.title ?? ''),
    done: record.done === true,
    createdAt: typeof record.createdAt === 'string' ? record.createdAt : '',
  };
}

/** Adds a todo to a list (`undefined`: My todos). */
export function addTodo(store: LocalStore, title: string, spaceId?: string): Promise<string> {
  return store.insert(TASKS, { title, done: false, createdAt: new Date().toISOString(), ...(spaceId !== undefined && { spaceId }) });
}
