// IndexedDB for Node: every test file gets an in-memory implementation.
import 'fake-indexeddb/auto';
