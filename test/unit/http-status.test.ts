import { describe, expect, it } from 'vitest';
import { ApiErrorCode } from '@capstan/console';
import { hostAllowed, httpStatusOf, HttpErrorCode } from '@capstan/kit';
import { ErrorCode } from '@capstan/schemas';

describe('http status and hosts', () => {
  it("http - one status per error code for every API: bad input 400, too large 413, missing 404, down 503, the rest not the caller's", () => {
    for (const c of [ErrorCode.InvalidArgument, ErrorCode.InvalidTenantId, ErrorCode.InvalidRunId, ErrorCode.RunIdReserved, ErrorCode.SchemaViolation, ErrorCode.DecodeFailed])
      expect(httpStatusOf(c), c).toBe(400);
    expect(httpStatusOf(ErrorCode.PayloadTooLarge)).toBe(413);
    // Webhook deliveries answer by the same table.
    expect(
      [ErrorCode.WebhookSignatureInvalid, ErrorCode.WebhookTimestampInvalid, ErrorCode.WebhookIdConflict, ErrorCode.RateLimited, ErrorCode.RouteNotFound].map(httpStatusOf),
    ).toEqual([401, 401, 409, 429, 404]);
    for (const c of [ErrorCode.RunNotFound, ErrorCode.UnknownTenant, ErrorCode.UnknownWorkflow, 'approval_not_found']) expect(httpStatusOf(c), c).toBe(404);
    for (const c of [ErrorCode.Unavailable, ErrorCode.ProjectionOutOfSync]) expect(httpStatusOf(c), c).toBe(503);
    expect(httpStatusOf(ErrorCode.InvalidConfig)).toBeUndefined();
  });

  it("http - the APIs' own codes are in the same table: who (401), may (403), missing (404), state (409), wait (429), ours (5xx)", () => {
    expect(Object.fromEntries(Object.values(HttpErrorCode).map((c) => [c, httpStatusOf(c)]))).toEqual({
      unauthenticated: 401,
      bad_credentials: 401,
      bad_token: 401,
      token_expired: 401,
      forbidden: 403,
      csrf_failed: 403,
      token_read_only: 403,
      not_found: 404,
      conflict: 409,
      too_many_attempts: 429,
      internal: 500,
      not_implemented: 501,
    });
    // The console's contract repeats them (the browser compiles it, so it imports nothing): the same codes, one status each.
    for (const c of Object.values(ApiErrorCode)) expect(httpStatusOf(c), c).toBeDefined();
    expect(Object.values(HttpErrorCode).filter((c) => !(Object.values(ApiErrorCode) as string[]).includes(c))).toEqual([]);
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
