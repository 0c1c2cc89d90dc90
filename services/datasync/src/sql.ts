/**
 * SQL text Capstan writes itself. Identifiers come from specs that matched
 * `SQL_IDENT_PATTERN` and are quoted all the same; values go as parameters or as literals
 * escaped by the driver. Nothing a source returns is ever spliced into a statement.
 */
import { createHash } from 'node:crypto';
import { SQL_IDENT_PATTERN, InvalidArgumentError } from '@capstan/schemas';

/** A quoted identifier. @throws InvalidArgumentError for anything but a plain identifier */
export function q(ident: string): string {
  if (!SQL_IDENT_PATTERN.test(ident)) throw new InvalidArgumentError(`${JSON.stringify(ident.slice(0, 64))} is not a SQL identifier`);
  return `"${ident}"`;
}

/** A schema-qualified, quoted table name. */
export function qt(schema: string | undefined, table: string): string {
  return schema ? `${q(schema)}.${q(table)}` : q(table);
}

/** The schema holding staging and state tables in the data plane's database. */
export const STATE_SCHEMA = 'capstan_datasync';

export function sha256(...parts: readonly string[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p).update('\n');
  return h.digest('hex');
}

/** A short digest for table names (they are at most 63 bytes). */
export const short = (...parts: readonly string[]) => sha256(...parts).slice(0, 12);

/**
 * Source types the data plane's database certainly has. Anything else (an enum, a domain, an
 * extension's type) is staged as text: its text form round-trips, and the destination gets
 * text too.
 */
const PORTABLE_TYPE =
  /^(?:smallint|integer|bigint|real|double precision|numeric(?:\(\d+(?:,\d+)?\))?|text|character varying(?:\(\d+\))?|character(?:\(\d+\))?|boolean|date|timestamp(?:\(\d\))? with(?:out)? time zone|time(?:\(\d\))? with(?:out)? time zone|interval|uuid|jsonb?|bytea|inet|cidr|macaddr|money|oid)$/;

export function portableType(sourceType: string): string {
  return PORTABLE_TYPE.test(sourceType) ? sourceType : 'text';
}

/** Text COPY format for one value (null is `\N`). */
export function copyValue(v: string | null): string {
  if (v === null) return '\\N';
  // Backslash first, then the characters COPY text gives a meaning to.
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/\r/g, '\\r').replace(/\t/g, '\\t');
}
