/** A todo as the seed package's API reads it: the Todo app's `{id, title, done, createdAt}` and the collection's timestamps. */
export interface Task {
  id: string;
  title: string;
  done: boolean;
  createdAt?: string;
  updatedAt?: string;
  deletedAt?: string | null;
}
