/**
 * JSON parsing that keeps the exact text of every object member's value.
 *
 * The merge breaks ties between writes with equal timestamps by comparing
 * the values' JSON *text* (see `spec/README.md`), and the server forwards
 * that text byte for byte. `JSON.parse` throws it away (`1.0` becomes `1`,
 * `"\u00e9"` becomes `"é"`), so replies from the server are parsed here
 * instead: the result is made of ordinary JS values, and
 * {@link rawMember} gives the text any object member arrived with.
 */

/** A JSON value. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** A JSON object. */
export type JsonObject = { [key: string]: JsonValue };

const RAW = new WeakMap<object, Map<string, string>>();

/** The text `object[key]` had in the JSON it was parsed from, if known. */
export function rawMember(object: object, key: string): string | undefined {
  return RAW.get(object)?.get(key);
}

/** The JSON text of `object[key]`: as it arrived when known, else serialized. */
export function rawOf(object: object, key: string): string | undefined {
  const raw = rawMember(object, key);
  if (raw !== undefined) return raw;
  const value = (object as Record<string, unknown>)[key];
  return value === undefined ? undefined : JSON.stringify(value);
}

/** Sets `object[key]` as an own property, even for `__proto__`. */
export function setOwn(object: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') {
    Object.defineProperty(object, key, { value, writable: true, enumerable: true, configurable: true });
  } else {
    object[key] = value;
  }
}

/** Thrown for text that is not JSON. */
export class JsonSyntaxError extends SyntaxError {
  constructor(message: string, readonly position: number) {
    super(`${message} at position ${position}`);
    this.name = 'JsonSyntaxError';
  }
}

const ESCAPES: Record<string, string> = {
  '"': '"',
  '\\': '\\',
  '/': '/',
  b: '\b',
  f: '\f',
  n: '\n',
  r: '\r',
  t: '\t',
};

const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
const PLAIN_STRING = /[^"\\\u0000-\u001f]*/y;

class Parser {
  private pos = 0;

  constructor(private readonly text: string) {}

  parse(): JsonValue {
    this.skipSpace();
    const value = this.value();
    this.skipSpace();
    if (this.pos < this.text.length) this.fail('unexpected text after the value');
    return value;
  }

  private fail(message: string): never {
    throw new JsonSyntaxError(message, this.pos);
  }

  private skipSpace(): void {
    const text = this.text;
    let pos = this.pos;
    for (;;) {
      const c = text.charCodeAt(pos);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) pos++;
      else break;
    }
    this.pos = pos;
  }

  private value(): JsonValue {
    const c = this.text[this.pos];
    switch (c) {
      case '{':
        return this.object();
      case '[':
        return this.array();
      case '"':
        return this.string();
      case 't':
        return this.literal('true', true);
      case 'f':
        return this.literal('false', false);
      case 'n':
        return this.literal('null', null);
      default:
        return this.number();
    }
  }

  private literal<T>(word: string, value: T): T {
    if (!this.text.startsWith(word, this.pos)) this.fail('unexpected token');
    this.pos += word.length;
    return value;
  }

  private number(): number {
    NUMBER.lastIndex = this.pos;
    const match = NUMBER.exec(this.text);
    if (!match || match[0].length === 0) this.fail('unexpected token');
    this.pos += match[0].length;
    return Number(match[0]);
  }

  private string(): string {
    const text = this.text;
    this.pos++; // the opening quote
    let out = '';
    for (;;) {
      PLAIN_STRING.lastIndex = this.pos;
      const plain = PLAIN_STRING.exec(text);
      if (plain && plain[0].length > 0) {
        out += plain[0];
        this.pos += plain[0].length;
      }
      const c = text[this.pos];
      if (c === '"') {
        this.pos++;
        return out;
      }
      if (c !== '\\') this.fail(c === undefined ? 'unterminated string' : 'control character in a string');
      const e = text[this.pos + 1];
      if (e === 'u') {
        const hex = text.slice(this.pos + 2, this.pos + 6);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) this.fail('bad unicode escape');
        out += String.fromCharCode(parseInt(hex, 16));
        this.pos += 6;
      } else {
        const escaped = e === undefined ? undefined : ESCAPES[e];
        if (escaped === undefined) this.fail('bad escape');
        out += escaped;
        this.pos += 2;
      }
    }
  }

  private array(): JsonValue[] {
    this.pos++;
    const out: JsonValue[] = [];
    this.skipSpace();
    if (this.text[this.pos] === ']') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.skipSpace();
      out.push(this.value());
      this.skipSpace();
      const c = this.text[this.pos++];
      if (c === ']') return out;
      if (c !== ',') {
        this.pos--;
        this.fail("expected ',' or ']'");
      }
    }
  }

  private object(): JsonObject {
    this.pos++;
    const out: JsonObject = {};
    const raw = new Map<string, string>();
    RAW.set(out, raw);
    this.skipSpace();
    if (this.text[this.pos] === '}') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.skipSpace();
      if (this.text[this.pos] !== '"') this.fail('expected a member name');
      const key = this.string();
      this.skipSpace();
      if (this.text[this.pos] !== ':') this.fail("expected ':'");
      this.pos++;
      this.skipSpace();
      const start = this.pos;
      const value = this.value();
      raw.set(key, this.text.slice(start, this.pos));
      setOwn(out, key, value);
      this.skipSpace();
      const c = this.text[this.pos++];
      if (c === '}') return out;
      if (c !== ',') {
        this.pos--;
        this.fail("expected ',' or '}'");
      }
    }
  }
}

/**
 * Parses JSON text like `JSON.parse`, remembering the text of every object
 * member (read it with {@link rawMember}).
 */
export function parseJson(text: string): JsonValue {
  return new Parser(text).parse();
}

/** Whether `value` is a JSON object (not an array, not null). */
export function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Orders two strings by their code points (what comparing their UTF-8 bytes
 * gives), not by UTF-16 units as `<` does.
 */
export function compareText(a: string, b: string): number {
  if (a === b) return 0;
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) {
      // UTF-16 order differs from code point order only between a surrogate
      // (a code point above U+FFFF) and a unit in U+E000..U+FFFF.
      const xSurrogate = x >= 0xd800 && x <= 0xdfff;
      const ySurrogate = y >= 0xd800 && y <= 0xdfff;
      if (xSurrogate && !ySurrogate && y >= 0xe000) return 1;
      if (ySurrogate && !xSurrogate && x >= 0xe000) return -1;
      return x < y ? -1 : 1;
    }
  }
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1;
}

/** JSON text of a string (for building request bodies from raw texts). */
export function quote(text: string): string {
  return JSON.stringify(text);
}
