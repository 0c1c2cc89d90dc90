import { describe, expect, it } from 'vitest';
import { CapstanError, ErrorCode, SchemaError, UnavailableError } from '@capstan/schemas';

describe('errors', () => {
  it('errors - CapstanError.is checks the brand, and with a code that code, whatever copy of the class made it', () => {
    const schema = new SchemaError('thing', '.x', 'must be a string');
    expect(CapstanError.is(schema)).toBe(true);
    expect(CapstanError.is(schema, ErrorCode.SchemaViolation)).toBe(true);
    expect(CapstanError.is(schema, ErrorCode.Unavailable)).toBe(false);
    expect(CapstanError.is(new UnavailableError('down'), ErrorCode.Unavailable)).toBe(true);
    // Another copy of @capstan/schemas (another install, a worker thread) brands the same way.
    class OtherCopy extends Error {
      readonly code = ErrorCode.SchemaViolation;
    }
    Object.defineProperty(OtherCopy.prototype, Symbol.for('capstan.CapstanError'), { value: true });
    const foreign = new OtherCopy('from elsewhere');
    expect(foreign instanceof SchemaError).toBe(false);
    expect(CapstanError.is(foreign, ErrorCode.SchemaViolation)).toBe(true);
    for (const v of [new Error('plain'), { code: ErrorCode.SchemaViolation }, null, undefined, 'schema_violation'])
      expect(CapstanError.is(v, ErrorCode.SchemaViolation)).toBe(false);
  });
});
