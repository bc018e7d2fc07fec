/**
 * RFC 3339 timestamps as the server accepts them, compared as instants with
 * nanosecond precision (the rules of `crates/protocol/src/timestamp.rs` and
 * `merge.rs`).
 */

/**
 * The timestamp of writes that carry none (inserts from old clients without
 * `data.updatedAt`): lower than any real write, so any real edit wins.
 */
export const LOWEST_TIMESTAMP = '0000-01-01T00:00:00.000000000Z';

/** An instant: seconds since the Unix epoch and nanoseconds within it. */
export interface Instant {
  seconds: number;
  nanos: number;
}

const CANONICAL = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$/;

/**
 * Whether `text` is in the fixed-width form `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`
 * that hybrid logical clocks write. For two such strings, text order is time
 * order.
 */
export function isCanonical(text: string): boolean {
  return text.length === 30 && CANONICAL.test(text);
}

// Any single ASCII separator between date and time, as the server's parser
// (the `time` crate) allows; fractional digits past the ninth are ignored.
const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[\u0000-\u007f](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;

function isLeapYear(year: number): boolean {
  return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
}

function daysInMonth(year: number, month: number): number {
  return [31, isLeapYear(year) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1] ?? 0;
}

/** Days from 1970-01-01 to a proleptic Gregorian date (any year). */
function daysFromCivil(year: number, month: number, day: number): number {
  const y = month <= 2 ? year - 1 : year;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const mp = (month + 9) % 12;
  const doy = Math.floor((153 * mp + 2) / 5) + day - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

/** The instant an RFC 3339 timestamp denotes, or `undefined` if it is not one. */
export function parseTimestamp(text: string): Instant | undefined {
  const m = RFC3339.exec(text);
  if (!m) return undefined;
  const year = Number(m[1]);
  const month = Number(m[2]);
  const day = Number(m[3]);
  const hour = Number(m[4]);
  const minute = Number(m[5]);
  let second = Number(m[6]);
  const fraction = m[7];
  let nanos = fraction === undefined ? 0 : Number(fraction.slice(0, 9).padEnd(9, '0'));
  let offset = 0;
  if (m[8] === undefined) {
    const offsetHour = Number(m[10]);
    const offsetMinute = Number(m[11]);
    if (offsetHour > 23 || offsetMinute > 59) return undefined;
    offset = (offsetHour * 60 + offsetMinute) * 60 * (m[9] === '-' ? -1 : 1);
  }
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) return undefined;
  if (hour > 23 || minute > 59 || second > 60) return undefined;
  const leap = second === 60;
  if (leap) {
    // A leap second stands for the last nanosecond of the minute, and is
    // valid only as the last second of a month, in UTC.
    second = 59;
    nanos = 999_999_999;
  }
  const seconds = daysFromCivil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset;
  if (leap) {
    const utc = new Date((seconds + 1) * 1000);
    const lastOfMonth = utc.getUTCDate() === 1 && utc.getUTCHours() === 0 && utc.getUTCMinutes() === 0 && utc.getUTCSeconds() === 0;
    if (!lastOfMonth) return undefined;
  }
  return { seconds, nanos };
}

/** Whether `text` is an RFC 3339 timestamp the server accepts. */
export function isTimestamp(text: unknown): text is string {
  return typeof text === 'string' && parseTimestamp(text) !== undefined;
}

const EPOCH: Instant = { seconds: 0, nanos: 0 };

/** Compares two timestamps as instants (negative, zero, positive). */
export function compareTimestamps(a: string, b: string): number {
  if (isCanonical(a) && isCanonical(b)) return a < b ? -1 : a > b ? 1 : 0;
  const x = parseTimestamp(a) ?? EPOCH;
  const y = parseTimestamp(b) ?? EPOCH;
  if (x.seconds !== y.seconds) return x.seconds < y.seconds ? -1 : 1;
  return x.nanos === y.nanos ? 0 : x.nanos < y.nanos ? -1 : 1;
}
