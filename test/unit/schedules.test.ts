/**
 * Schedules as pure functions: slots of cron (with time zones and DST) and intervals, the
 * catch-up and overlap policies of one firing, the specs a schedule is refused for, and the
 * run ids that make a slot start at most once.
 */
import { describe, expect, it } from 'vitest';
import { checkScheduleSpec, nextSlots, planFiring, scheduleRunId, triggerRunId, webhookRunId, parseEvery, BUFFER_RECHECK_MS, type FiringInput } from '@capstan/kit';
import { CapstanError, isRunId, parseScheduleCommand, parseTenantId, runIdTime, type ScheduleSpec } from '@capstan/schemas';

const t = parseTenantId('acme');
const every = (ms: number, extra: Partial<ScheduleSpec> = {}): ScheduleSpec => ({ workflow: 'wf', everyMs: ms, ...extra });
const fire = (o: Partial<FiringInput> & { spec: ScheduleSpec }): ReturnType<typeof planFiring> =>
  planFiring({ anchorMs: 0, next: 10_000, woken: 10_000, now: 10_200, lastActive: false, buffered: undefined, ...o });

describe('slots', () => {
  it('intervals count from the anchor (or startAt) and stop at endAt', () => {
    expect(nextSlots(every(1000), 500, 500, 3)).toEqual([1500, 2500, 3500]);
    expect(nextSlots(every(1000), 500, 0, 2)).toEqual([500, 1500]);
    const bounded = every(1000, { startAt: new Date(5000).toISOString(), endAt: new Date(7000).toISOString() });
    expect(nextSlots(bounded, 0, 0, 10)).toEqual([5000, 6000, 7000]);
  });

  it('cron runs in its time zone, through a daylight-saving change', () => {
    const spec: ScheduleSpec = { workflow: 'wf', cron: '30 2 * * *', timezone: 'Europe/Berlin' };
    const slots = nextSlots(spec, 0, Date.parse('2025-03-29T00:00:00Z'), 3).map((s) => new Date(s).toISOString());
    // 02:30 does not exist on 30 March in Berlin: that day's run is at 03:00 CEST.
    expect(slots).toEqual(['2025-03-29T01:30:00.000Z', '2025-03-30T01:00:00.000Z', '2025-03-31T00:30:00.000Z']);
    expect(nextSlots({ workflow: 'wf', cron: '*/2 * * * * *' }, 0, Date.parse('2025-01-01T00:00:00Z'), 2).map((s) => new Date(s).toISOString())).toEqual([
      '2025-01-01T00:00:02.000Z',
      '2025-01-01T00:00:04.000Z',
    ]);
  });

  it('refuses specs it cannot honour, saying why', () => {
    const refused = (v: unknown) => {
      try {
        checkScheduleSpec(v);
      } catch (e) {
        return CapstanError.is(e) ? `${e.code}: ${e.message}` : String(e);
      }
      return 'accepted';
    };
    expect(refused({ workflow: 'wf', cron: '61 * * * *' })).toMatch(/^invalid_argument: cron "61 \* \* \* \*".*minute/);
    expect(refused({ workflow: 'wf', cron: '* * * * *', timezone: 'Mars/Olympus' })).toMatch(/^invalid_argument: .*Mars\/Olympus/);
    expect(refused({ workflow: 'wf', cron: '* * * * *', everyMs: 1000 })).toMatch(/schema_violation: .*exactly one of cron and everyMs/);
    expect(refused({ workflow: 'wf' })).toMatch(/exactly one of cron and everyMs/);
    expect(refused({ workflow: 'wf', everyMs: 999 })).toMatch(/everyMs must be between 1000/);
    expect(refused({ workflow: 'wf', everyMs: 1000, timezone: 'UTC' })).toMatch(/timezone applies to cron schedules only/);
    expect(refused({ workflow: 'wf', everyMs: 1000, startAt: '2030-01-02T00:00:00Z', endAt: '2030-01-01T00:00:00Z' })).toMatch(/endAt must be after startAt/);
    expect(refused({ workflow: 'wf', everyMs: 1000, overlap: 'sometimes' })).toMatch(/overlap must be one of/);
    expect(refused({ workflow: 'wf', everyMs: 1000, extra: 1 })).toMatch(/schema_violation/);
    expect(refused({ workflow: 'wf', cron: '@hourly', timezone: 'America/New_York' })).toBe('accepted');
    expect(() => parseScheduleCommand({ op: 'explode', schedule: 'x', by: 'ann' })).toThrow(/op must be one of create, pause, resume, trigger, delete/);
    expect(() => parseScheduleCommand({ op: 'pause', schedule: 'Bad Id', by: 'ann' })).toThrow(/schedule must match/);
  });

  it('intervals parse from words', () => {
    expect([parseEvery('30s'), parseEvery('5m'), parseEvery('2h'), parseEvery('1d'), parseEvery('1500ms')]).toEqual([30_000, 300_000, 7_200_000, 86_400_000, 1500]);
    expect(() => parseEvery('soon')).toThrow(/not an interval/);
  });
});

describe('one firing', () => {
  it('starts the due slot and arms the next', () => {
    expect(fire({ spec: every(1000) })).toEqual({ start: [10_000], skipped: [], buffered: undefined, next: 11_000, wakeAt: 11_000 });
  });

  it('a woken slot is due even when this clock is behind the server that fired it', () => {
    expect(fire({ spec: every(1000), now: 9_700 }).start).toEqual([10_000]);
  });

  it('nothing is due when woken early (a buffered slot re-check)', () => {
    expect(fire({ spec: every(1000), next: 11_000, woken: 10_500, now: 10_500 })).toMatchObject({ start: [], next: 11_000 });
  });

  describe('catch-up after downtime (slots 10 s … 15 s found at 15.5 s; overlap allow-all)', () => {
    const down = (catchup: ScheduleSpec['catchup'], catchupWindowMs?: number) =>
      fire({ spec: every(1000, { overlap: 'allow-all', catchup, ...(catchupWindowMs !== undefined ? { catchupWindowMs } : {}) }), now: 15_500 });
    it('all: every missed slot within the window runs', () => {
      expect(down('all')).toMatchObject({ start: [10_000, 11_000, 12_000, 13_000, 14_000, 15_000], skipped: [], next: 16_000 });
      expect(down('all', 2500)).toMatchObject({ start: [13_000, 14_000, 15_000], skipped: [10_000, 11_000, 12_000] });
    });
    it('last: only the latest missed slot runs, and the one on time', () => {
      expect(down('last')).toMatchObject({ start: [14_000, 15_000], skipped: [10_000, 11_000, 12_000, 13_000] });
    });
    it('skip: missed slots are dropped; the one on time runs', () => {
      expect(down('skip')).toMatchObject({ start: [15_000], skipped: [10_000, 11_000, 12_000, 13_000, 14_000] });
    });
    it('a slot more than 15 s late is missed even without a successor due', () => {
      const daily = every(86_400_000, { catchup: 'skip' });
      expect(planFiring({ spec: daily, anchorMs: 0, next: 86_400_000, woken: 86_400_000, now: 86_400_000 + 16_000, lastActive: false, buffered: undefined })).toMatchObject({
        start: [],
        skipped: [86_400_000],
      });
      expect(planFiring({ spec: daily, anchorMs: 0, next: 86_400_000, woken: 86_400_000, now: 86_400_000 + 14_000, lastActive: false, buffered: undefined })).toMatchObject({
        start: [86_400_000],
      });
    });
  });

  describe('overlap while the last run has not ended', () => {
    it('skip drops the slot', () => {
      expect(fire({ spec: every(1000, { overlap: 'skip' }), lastActive: true })).toMatchObject({ start: [], skipped: [10_000], buffered: undefined });
    });
    it('allow-all starts it anyway', () => {
      expect(fire({ spec: every(1000, { overlap: 'allow-all' }), lastActive: true })).toMatchObject({ start: [10_000], skipped: [] });
    });
    it('buffer-one keeps the first such slot, drops later ones, and starts it once the run has ended', () => {
      const spec = every(1000, { overlap: 'buffer-one' });
      const a = fire({ spec, lastActive: true });
      expect(a).toMatchObject({ start: [], skipped: [], buffered: 10_000, next: 11_000, wakeAt: 11_000 });
      const b = fire({ spec, next: 11_000, woken: 11_000, now: 11_100, lastActive: true, buffered: 10_000 });
      expect(b).toMatchObject({ start: [], skipped: [11_000], buffered: 10_000, wakeAt: 12_000 });
      // Woken early to look again: the run has ended, so the buffered slot starts now.
      const c = fire({ spec, next: 12_000, woken: 11_500, now: 11_500, lastActive: false, buffered: 10_000 });
      expect(c).toMatchObject({ start: [10_000], skipped: [], buffered: undefined, next: 12_000 });
      // A long gap between slots: the re-check comes before the next slot.
      const hourly = every(3_600_000, { overlap: 'buffer-one' });
      const d = planFiring({ spec: hourly, anchorMs: 0, next: 3_600_000, woken: 3_600_000, now: 3_600_100, lastActive: true, buffered: undefined });
      expect(d).toMatchObject({ buffered: 3_600_000, next: 7_200_000, wakeAt: 3_600_100 + BUFFER_RECHECK_MS });
    });
    it('catch-up all with overlap skip starts the first missed slot and skips the rest', () => {
      expect(fire({ spec: every(1000, { overlap: 'skip' }), now: 12_500 })).toMatchObject({ start: [10_000], skipped: [11_000, 12_000] });
    });
  });

  it('a schedule past its end has no next slot', () => {
    const spec = every(1000, { endAt: new Date(10_000).toISOString() });
    expect(fire({ spec })).toMatchObject({ start: [10_000], next: undefined, wakeAt: undefined });
  });
});

describe('run ids', () => {
  it('a slot names one run, by tenant, schedule, generation and slot; its time is the slot', () => {
    const a = scheduleRunId(t, 'nightly', 7, 1_700_000_000_000);
    expect(isRunId(a)).toBe(true);
    expect(scheduleRunId(t, 'nightly', 7, 1_700_000_000_000)).toBe(a);
    expect(runIdTime(a)).toBe(1_700_000_000_000);
    const others = [
      scheduleRunId(t, 'nightly', 7, 1_700_000_001_000),
      scheduleRunId(t, 'nightly', 8, 1_700_000_000_000),
      scheduleRunId(t, 'hourly', 7, 1_700_000_000_000),
      scheduleRunId(parseTenantId('other'), 'nightly', 7, 1_700_000_000_000),
    ];
    expect(new Set([a, ...others]).size).toBe(5);
    expect(triggerRunId(t, 'nightly', 7, 42, 1_700_000_000_000)).toBe(triggerRunId(t, 'nightly', 7, 42, 1_700_000_000_000));
    expect(triggerRunId(t, 'nightly', 7, 43, 1_700_000_000_000)).not.toBe(triggerRunId(t, 'nightly', 7, 42, 1_700_000_000_000));
  });

  it('a webhook id names one run per route, whenever it is delivered', () => {
    const a = webhookRunId(t, 'github', 'msg_1');
    expect(isRunId(a)).toBe(true);
    expect(webhookRunId(t, 'github', 'msg_1')).toBe(a);
    expect(webhookRunId(t, 'stripe', 'msg_1')).not.toBe(a);
    expect(webhookRunId(t, 'github', 'msg_2')).not.toBe(a);
  });
});
