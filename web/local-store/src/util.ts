/** Small helpers: identifiers, ids, tokens. */

import { StoreError } from './errors.ts';

/** Longest app id, collection or field name, in UTF-8 bytes (as the server). */
export const MAX_NAME_LEN = 128;
/** Longest record id, in UTF-8 bytes. */
export const MAX_ID_LEN = 512;

const encoder = new TextEncoder();
// Unicode's control characters (Rust's `char::is_control`: Cc).
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/** Checks an identifier against the server's rules; throws `invalid_input`. */
export function checkIdentifier(what: string, value: unknown, max: number): asserts value is string {
  if (typeof value !== 'string') throw new StoreError('invalid_input', `${what} must be a string`);
  if (value.length === 0) throw new StoreError('invalid_input', `${what} must not be empty`);
  if (encoder.encode(value).length > max) throw new StoreError('invalid_input', `${what} \`${value.slice(0, 40)}…\` must be at most ${max} bytes long`);
  if (CONTROL.test(value)) throw new StoreError('invalid_input', `${what} must not contain control characters`);
}

/** Checks a field name: an identifier that does not start with `__` (metadata). */
export function checkField(name: string): void {
  checkIdentifier('field name', name, MAX_NAME_LEN);
  if (name.startsWith('__')) throw new StoreError('invalid_input', `field \`${name}\`: names starting with \`__\` are reserved for metadata`);
}

function randomBytes(n: number): Uint8Array {
  const bytes = new Uint8Array(n);
  crypto.getRandomValues(bytes);
  return bytes;
}

function format(bytes: Uint8Array): string {
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A random UUID (version 4). Works outside secure contexts too. */
export function uuidV4(): string {
  const bytes = randomBytes(16);
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  return format(bytes);
}

let lastV7 = { millis: 0, seq: 0 };

/** A time-ordered UUID (version 7): ids made later sort after, within this page too. */
export function uuidV7(now: number = Date.now()): string {
  const bytes = randomBytes(16);
  let millis = Math.max(Math.floor(now), lastV7.millis);
  let seq = millis === lastV7.millis ? lastV7.seq + 1 : (bytes[6]! & 0x0f) * 256 + bytes[7]!;
  if (seq > 0xfff) {
    millis += 1;
    seq = 0;
  }
  lastV7 = { millis, seq };
  for (let i = 5; i >= 0; i--) {
    bytes[i] = millis % 256;
    millis = Math.floor(millis / 256);
  }
  bytes[6] = 0x70 | (seq >> 8);
  bytes[7] = seq & 0xff;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  return format(bytes);
}

/** The `sub` claim of a JWT, unverified (only the server can verify it). */
export function tokenSubject(token: string): string {
  const parts = token.trim().split('.');
  if (parts.length !== 3) throw new StoreError('invalid_token', 'expected three dot-separated parts');
  let claims: unknown;
  try {
    const base64 = parts[1]!.replace(/-/g, '+').replace(/_/g, '/').replace(/=+$/, '');
    const binary = atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, '='));
    claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
  } catch (error) {
    throw new StoreError('invalid_token', `the payload is not base64url JSON: ${String(error)}`);
  }
  const sub = (claims as { sub?: unknown } | null)?.sub;
  if (typeof sub !== 'string' || sub.length === 0) throw new StoreError('invalid_token', 'no `sub` claim');
  return sub;
}
