/**
 * The shared merge vectors (`spec/merge-vectors.json`, the same file the
 * Rust suite runs in `crates/protocol/tests/merge_vectors.rs`): every case,
 * in every order of its incoming changes, then once more for idempotence.
 */

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { isObject, parseJson, type JsonValue } from '../src/json.ts';
import { applyChange, emptyState, readChange, stateFromJson, stateToJson, view, type RecordState } from '../src/merge.ts';

const path = fileURLToPath(new URL('../../../spec/merge-vectors.json', import.meta.url));
// Parsed keeping every value's text: ties compare the text a write arrived with.
const cases = parseJson(readFileSync(path, 'utf8'));

function permutations<T>(items: T[]): T[][] {
  if (items.length <= 1) return [items];
  return items.flatMap((item, i) => permutations([...items.slice(0, i), ...items.slice(i + 1)]).map((rest) => [item, ...rest]));
}

/** A JSON value as plain data (key order and number spelling do not matter). */
function plain(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value ?? null));
}

function start(local: JsonValue | undefined): RecordState {
  return local === null || local === undefined ? emptyState() : stateFromJson(local);
}

describe('spec/merge-vectors.json', () => {
  it('is the shared file, with cases', () => {
    expect(Array.isArray(cases)).toBe(true);
    expect((cases as JsonValue[]).length).toBeGreaterThanOrEqual(20);
  });

  for (const vector of cases as JsonValue[]) {
    if (!isObject(vector)) throw new Error('a case must be an object');
    const incoming = (vector.incoming as JsonValue[]).map(readChange);
    it(String(vector.name), () => {
      const orders = permutations(incoming.map((_, i) => i));
      for (const order of orders) {
        const state = start(vector.local);
        for (const i of order) applyChange(state, incoming[i]!);
        const label = `${String(vector.name)} (order ${order.join(',')})`;
        expect(plain(stateToJson(state)), label).toEqual(plain(vector.expected));
        expect(plain(view(state) ?? null), label).toEqual(plain(vector.expectedView));
        // Merging is idempotent: every change once more changes nothing.
        const before = JSON.stringify(stateToJson(state));
        for (const change of incoming) expect(applyChange(state, change), `${label}: re-applied`).toBe(false);
        expect(JSON.stringify(stateToJson(state))).toBe(before);
      }
    });
  }
});
