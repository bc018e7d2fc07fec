/** The pure pieces: raw-preserving JSON, RFC 3339 timestamps, the hybrid logical clock. */

import { describe, expect, it } from 'vitest';

import { compareHlc, fromMillis, hlcOf, hlcText, next, observe, tick, TICKS_PER_MILLI } from '../src/clock.ts';
import { compareText, parseJson, rawMember } from '../src/json.ts';
import { LOWEST_TIMESTAMP, compareTimestamps, isCanonical, parseTimestamp } from '../src/timestamp.ts';
import { NOW } from './helpers.ts';

describe('parseJson', () => {
  const corpus = [
    '{"a":1,"b":[true,false,null],"c":{"d":"e"},"f":-1.5e-3,"g":""}',
    ' [ 1 , 2 ,{ } , [ ] ] ',
    '"\\u00e9\\n\\t\\"\\\\\\/\\ud83d\\ude00"',
    '{"__proto__":{"x":1},"constructor":2}',
    '0',
    '{"dup":1,"dup":2}',
  ];

  it('reads what JSON.parse reads', () => {
    for (const text of corpus) expect(parseJson(text)).toEqual(JSON.parse(text));
  });

  it('keeps the text of every member', () => {
    const value = parseJson('{"n": 1.0, "s": "\\u00e9", "o": {"b": 1, "a": 2}, "big": 12345678901234567890}') as Record<string, unknown>;
    expect(rawMember(value, 'n')).toBe('1.0');
    expect(rawMember(value, 's')).toBe('"\\u00e9"');
    expect(rawMember(value, 'o')).toBe('{"b": 1, "a": 2}');
    expect(rawMember(value, 'big')).toBe('12345678901234567890');
    expect(value.s).toBe('é');
    const proto = parseJson('{"__proto__":{"polluted":true}}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(proto)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.keys(proto)).toEqual(['__proto__']);
  });

  it('refuses what JSON.parse refuses', () => {
    for (const bad of ['', '{', '{"a":}', '[1,]', '01', '"\u0001"', '"\\x"', 'nul', '{"a" 1}', '1 2', "'a'", '"\\u12"']) {
      expect(() => JSON.parse(bad), bad).toThrow();
      expect(() => parseJson(bad), bad).toThrow(SyntaxError);
    }
  });
});

describe('compareText', () => {
  it('orders by code point, as UTF-8 bytes do', () => {
    // U+FF5E (one UTF-16 unit, 0xFF5E) sorts before U+1F600 (surrogates 0xD83D…), unlike `<`.
    expect('\uff5e' < '\u{1f600}').toBe(false);
    expect(compareText('\uff5e', '\u{1f600}')).toBe(-1);
    expect(compareText('\u{1f600}', '\uff5e')).toBe(1);
    expect(compareText('a', 'b')).toBe(-1);
    expect(compareText('ab', 'a')).toBe(1);
    expect(compareText('é', 'é')).toBe(0);
  });
});

describe('timestamps', () => {
  it('accept RFC 3339 as the server does, and nothing else', () => {
    for (const good of ['2026-11-25T10:00:00Z', '2026-11-25t10:00:00.5z', '2026-11-25 10:00:00+01:00', '0000-01-01T00:00:00.000000000Z', '2016-12-31T23:59:60Z', '2024-02-29T00:00:00Z', '2026-11-25T10:00:00.1234567891234Z']) {
      expect(parseTimestamp(good), good).toBeDefined();
    }
    for (const bad of ['', 'yesterday', '2026-11-25', '2026-13-01T00:00:00Z', '2025-02-29T00:00:00Z', '2026-11-25T24:00:00Z', '2026-11-25T10:00:00', '2026-11-25T10:00:00+24:00', '2026-11-25T10:00:60Z', '2026-11-25T10:00:00.Z', '2026-11-25€10:00:00Z']) {
      expect(parseTimestamp(bad), bad).toBeUndefined();
    }
  });

  it('compare as instants with nanosecond precision', () => {
    expect(compareTimestamps('2026-11-25T10:00:00.000000000Z', '2026-11-25T10:00:00Z')).toBe(0);
    expect(compareTimestamps('2026-11-25T10:00:00.000000000Z', '2026-11-25T11:00:00.5+01:00')).toBe(-1);
    expect(compareTimestamps('2026-11-25T10:00:00.123000001Z', '2026-11-25T10:00:00.123Z')).toBe(1);
    expect(compareTimestamps(LOWEST_TIMESTAMP, '0001-01-01T00:00:00Z')).toBe(-1);
    expect(compareTimestamps('2016-12-31T23:59:60Z', '2016-12-31T23:59:59.999999998Z')).toBe(1);
    expect(isCanonical(LOWEST_TIMESTAMP)).toBe(true);
    expect(isCanonical('2026-11-25T10:00:00Z')).toBe(false);
  });
});

describe('the hybrid logical clock', () => {
  it('writes fixed-width canonical RFC 3339 (milliseconds, then a six-digit counter)', () => {
    const reading = { millis: Date.UTC(2026, 10, 25, 10, 0, 0, 123), counter: 4567 };
    expect(hlcText(reading)).toBe('2026-11-25T10:00:00.123004567Z');
    expect(isCanonical(hlcText(reading))).toBe(true);
    expect(hlcOf(hlcText(reading))).toEqual(reading);
    expect(hlcText(hlcOf(LOWEST_TIMESTAMP))).toBe(LOWEST_TIMESTAMP);
    expect(hlcText(hlcOf('2026-11-25T11:00:00.5+01:00'))).toBe('2026-11-25T10:00:00.500000000Z');
  });

  it('strictly increases when the wall clock stalls or steps back, and carries the counter', () => {
    let last = fromMillis(0);
    let previous = '';
    for (const physical of [NOW, NOW, NOW, NOW - 60_000, NOW + 1, NOW + 1]) {
      const reading = tick(last, physical);
      expect(compareHlc(reading, last)).toBe(1);
      expect(hlcText(reading) > previous).toBe(true);
      previous = hlcText(reading);
      last = reading;
    }
    expect(tick(last, NOW + 10)).toEqual(fromMillis(NOW + 10));
    expect(next({ millis: NOW, counter: TICKS_PER_MILLI - 1 })).toEqual(fromMillis(NOW + 1));
  });

  it('follows remote readings within the drift bound only', () => {
    const last = fromMillis(NOW);
    const near = fromMillis(NOW + 60_000);
    expect(observe(last, near, NOW)).toEqual(near);
    const far = fromMillis(NOW + 24 * 3600 * 1000);
    expect(observe(last, far, NOW)).toEqual(last);
    expect(observe(last, fromMillis(NOW - 5), NOW)).toEqual(last);
  });
});
