/**
 * The hybrid logical clock that timestamps every local write; the same rules
 * and text format as the Rust client (`crates/client/src/clock.rs`).
 *
 * A reading is physical milliseconds since the Unix epoch plus a logical
 * counter, written as fixed-width RFC 3339 UTC text with nine fractional
 * digits: `2026-11-25T10:00:00.123004567Z` is millisecond `.123` with counter
 * `4567`. Text order is therefore time order.
 *
 * - A local write takes `max(physical now, last + 1 tick)`: readings strictly
 *   increase even if the wall clock stalls or steps back.
 * - A remote timestamp moves the clock forward, unless it is more than
 *   {@link MAX_DRIFT_MS} ahead of this device's wall clock (a wrong clock
 *   must not drag every later local write into the future).
 * - The last reading is saved with every write, in the write's transaction.
 */

import { parseTimestamp } from './timestamp.ts';

/** How far ahead of the wall clock a remote timestamp may advance the clock. */
export const MAX_DRIFT_MS = 5 * 60 * 1000;

/** Logical ticks per millisecond (six decimal digits). */
export const TICKS_PER_MILLI = 1_000_000;

/** 9999-12-31T23:59:59.999Z, the latest instant the format holds. */
const MAX_MILLIS = 253_402_300_799_999;
/** 0000-01-01T00:00:00.000Z, the earliest. */
const MIN_MILLIS = -62_167_219_200_000;

/** One reading of the clock. */
export interface HlcTime {
  readonly millis: number;
  readonly counter: number;
}

/** The reading at `millis` with counter 0. */
export function fromMillis(millis: number): HlcTime {
  return { millis: Math.min(Math.max(Math.floor(millis), MIN_MILLIS), MAX_MILLIS), counter: 0 };
}

/** Orders two readings. */
export function compareHlc(a: HlcTime, b: HlcTime): number {
  if (a.millis !== b.millis) return a.millis < b.millis ? -1 : 1;
  return a.counter === b.counter ? 0 : a.counter < b.counter ? -1 : 1;
}

/** The next reading after `t`. */
export function next(t: HlcTime): HlcTime {
  return t.counter + 1 < TICKS_PER_MILLI ? { millis: t.millis, counter: t.counter + 1 } : fromMillis(t.millis + 1);
}

/** The reading of any RFC 3339 timestamp: its milliseconds, and its sub-millisecond nanoseconds as the counter. */
export function hlcOf(timestamp: string): HlcTime {
  const instant = parseTimestamp(timestamp);
  if (!instant) return fromMillis(0);
  const millis = instant.seconds * 1000 + Math.floor(instant.nanos / 1_000_000);
  if (millis > MAX_MILLIS) return fromMillis(MAX_MILLIS);
  return { millis, counter: instant.nanos % 1_000_000 };
}

/** The reading as canonical RFC 3339 text. */
export function hlcText(t: HlcTime): string {
  const iso = new Date(t.millis).toISOString(); // YYYY-MM-DDTHH:MM:SS.mmmZ for years 0000..9999
  return `${iso.slice(0, 23)}${String(t.counter).padStart(6, '0')}Z`;
}

/** The next reading for a local write: after `last`, and at least `physicalMillis`. */
export function tick(last: HlcTime, physicalMillis: number): HlcTime {
  const physical = fromMillis(physicalMillis);
  return compareHlc(physical, last) > 0 ? physical : next(last);
}

/**
 * The clock after seeing a remote write at `remote`: forward to `remote`
 * unless it is more than {@link MAX_DRIFT_MS} ahead of `physicalMillis`.
 */
export function observe(last: HlcTime, remote: HlcTime, physicalMillis: number): HlcTime {
  if (remote.millis > physicalMillis + MAX_DRIFT_MS) return last;
  return compareHlc(remote, last) > 0 ? remote : last;
}
