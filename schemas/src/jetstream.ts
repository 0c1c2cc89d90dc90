/**
 * The JetStream API error codes (`err_code`, nats-server's numbering) Capstan acts on,
 * spelled once: services compare `JetStreamApiError.code` (or a batch ack's `err_code`)
 * with these, never with a bare number.
 */
export const JsApiCode = {
  /** A direct get or `last by subject` found no message. */
  NoMessageFound: 10037,
  /** The stream does not exist (the tenant was not provisioned, or was removed). */
  StreamNotFound: 10059,
  /** `Nats-Expected-Last-Subject-Sequence` (or last sequence) did not match: someone appended first. */
  StreamWrongLastSequence: 10071,
  /** The same conflict as StreamWrongLastSequence, reported without the sequence (inside atomic batches). */
  StreamWrongLastSequenceConstant: 10164,
  /** An atomic batch carried a message id the stream already stored. */
  AtomicBatchDuplicateMessageId: 10201,
} as const;

export type JsApiCode = (typeof JsApiCode)[keyof typeof JsApiCode];

/** Codes meaning "the expected last sequence did not hold": an optimistic-concurrency conflict. */
export const JS_SEQUENCE_CONFLICT_CODES: ReadonlySet<number> = new Set([JsApiCode.StreamWrongLastSequence, JsApiCode.StreamWrongLastSequenceConstant]);
