/**
 * Whether projections still follow their run stream (`judgeSync`, pure): the same stream
 * (creation time) holding the checkpoint, with nothing dropped before it was applied.
 */
import { describe, expect, it } from 'vitest';
import { judgeSync, outOfSyncReason, type FollowedStream, type StreamNow } from '@capstan/kit';

const STREAM = 'CAP_RUNS_t';
const CREATED = '2026-12-01T10:00:00.123456789Z';
const now = (o: Partial<StreamNow> = {}): StreamNow => ({ created: CREATED, firstSeq: 1, lastSeq: 40, ...o });
const followed = (o: Partial<FollowedStream> = {}): FollowedStream => ({ checkpoint: 30, created: CREATED, firstSeq: 1, outOfSync: null, ...o });

describe('projections follow their run stream', () => {
  it('nothing applied yet: any stream will do, and its identity is recorded', () => {
    expect(judgeSync(STREAM, undefined, now())).toEqual({ inSync: true, record: true });
    expect(judgeSync(STREAM, followed({ checkpoint: 0, created: 'another' }), now())).toEqual({ inSync: true, record: true });
    expect(judgeSync(STREAM, followed({ checkpoint: 0 }), now())).toEqual({ inSync: true, record: false });
  });

  it('the same stream, behind it or level with it: in sync', () => {
    expect(judgeSync(STREAM, followed(), now())).toEqual({ inSync: true, record: false });
    expect(judgeSync(STREAM, followed({ checkpoint: 40 }), now())).toEqual({ inSync: true, record: false });
    // Events removed that were already applied are no loss to the projections.
    expect(judgeSync(STREAM, followed(), now({ firstSeq: 31 }))).toEqual({ inSync: true, record: false });
  });

  it('a stream created again under the same name: out of sync, whatever its length', () => {
    for (const lastSeq of [3, 30, 500]) {
      const v = judgeSync(STREAM, followed(), now({ created: '2026-12-02T08:00:00Z', lastSeq }));
      expect(v.inSync).toBe(false);
      if (!v.inSync)
        expect(v.reason).toMatch(
          /CAP_RUNS_t was created again \(at 2026-12-02T08:00:00Z; the projections applied CAP_RUNS_t up to sequence 30 of the one created at 2026-12-01T10:00:00.123456789Z\)/,
        );
    }
  });

  it('a stream that ends before the checkpoint (restored from an older copy, another store): out of sync', () => {
    const v = judgeSync(STREAM, followed(), now({ lastSeq: 12 }));
    expect(v).toEqual({ inSync: false, reason: expect.stringMatching(/ends at sequence 12, before the checkpoint/) });
  });

  it('events removed before they were applied: out of sync', () => {
    const v = judgeSync(STREAM, followed(), now({ firstSeq: 35 }));
    expect(v).toEqual({ inSync: false, reason: expect.stringMatching(/now starts at sequence 35.*removed before they were applied/) });
  });

  it('rows from before identities: taken to follow the stream (and recorded) unless it ends before their checkpoint', () => {
    expect(judgeSync(STREAM, followed({ created: null, firstSeq: null }), now())).toEqual({ inSync: true, record: true });
    expect(judgeSync(STREAM, followed({ created: null, firstSeq: null, checkpoint: 50 }), now()).inSync).toBe(false);
  });

  it("readers: the stream now decides when known, else the projector's mark", () => {
    expect(outOfSyncReason(STREAM, followed(), now())).toBeUndefined();
    expect(outOfSyncReason(STREAM, followed({ outOfSync: 'marked' }), undefined)).toBe('marked');
    expect(outOfSyncReason(STREAM, followed(), now({ created: 'x' }))).toMatch(/created again/);
    expect(outOfSyncReason(STREAM, undefined, undefined)).toBeUndefined();
  });
});
