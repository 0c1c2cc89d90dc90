import { describe, expect, it } from 'vitest';
import { hostAllowed, httpStatusOf } from '@capstan/kit';
import { ErrorCode } from '@capstan/schemas';

describe('http status and hosts', () => {
  it("http - one status per error code for every API: bad input 400, missing 404, down 503, the rest not the caller's", () => {
    for (const c of [ErrorCode.InvalidArgument, ErrorCode.InvalidTenantId, ErrorCode.InvalidRunId, ErrorCode.SchemaViolation, ErrorCode.PayloadTooLarge, ErrorCode.DecodeFailed])
      expect(httpStatusOf(c), c).toBe(400);
    for (const c of [ErrorCode.RunNotFound, ErrorCode.UnknownTenant, ErrorCode.UnknownWorkflow, 'approval_not_found']) expect(httpStatusOf(c), c).toBe(404);
    for (const c of [ErrorCode.Unavailable, ErrorCode.ProjectionOutOfSync]) expect(httpStatusOf(c), c).toBe(503);
    expect(httpStatusOf(ErrorCode.InvalidConfig)).toBeUndefined();
  });

  it('http - Host: IP literals, localhost and allowed names are answered; any other name (DNS rebinding) is not', () => {
    for (const h of ['127.0.0.1:8080', '127.0.0.1', '[::1]:80', '10.0.0.7:3000', 'localhost:8080', 'LOCALHOST', 'console.example.com', 'console.example.com:443']) {
      expect(hostAllowed(h, new Set(['console.example.com'])), h).toBe(true);
    }
    for (const h of [undefined, '', 'attacker.example:8080', 'localhost.attacker.example', 'console.example.com.attacker.example', '127.0.0.1.nip.io', 'a b', '[::1']) {
      expect(hostAllowed(h, new Set(['console.example.com'])), String(h)).toBe(false);
    }
  });
});
