/**
 * How a completion event is signed, and how a receiver checks it (docs/contract.md "Completion events").
 * The signature is HMAC-SHA256 over `${timestamp}.${body}` with the secret configured on the worker, sent as
 * `stopflow-signature: v1=<hex>` beside `stopflow-timestamp: <unix seconds>`. Signing the timestamp with
 * the body lets a receiver refuse a replayed old request; comparing in constant time keeps the secret's
 * digest from leaking through timing.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const SIGNATURE_HEADER = 'stopflow-signature';
export const TIMESTAMP_HEADER = 'stopflow-timestamp';
/** The event's id (`<workflowId>/<runId>`): the same on every retry, so a receiver can drop a repeat. */
export const IDEMPOTENCY_HEADER = 'idempotency-key';
/** Requests older (or further ahead) than this are refused by `verifyStopEventSignature`. */
export const SIGNATURE_TOLERANCE_SECONDS = 300;
/** The shortest secret the worker accepts (STOPFLOW_EVENTS_SECRET); a receiver with a shorter one verifies nothing. */
export const MIN_EVENTS_SECRET_LENGTH = 16;

/** `v1=<hex HMAC-SHA256 of "${timestamp}.${body}">`. */
export function signStopEvent(secret: string, timestamp: number, body: string): string {
  return `v1=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

export interface StopEventSignatureInput {
  secret: string;
  /** The raw request body, exactly as received (before any JSON parsing). */
  body: string;
  /** The `stopflow-timestamp` header. */
  timestamp: string | undefined;
  /** The `stopflow-signature` header. */
  signature: string | undefined;
  toleranceSeconds?: number;
  /** The receiver's clock, in ms. Default: now. */
  now?: number;
}

/**
 * True when the body was signed with `secret` at a time within the tolerance (5 minutes by default).
 * Anything missing, malformed, stale or different is false, and so is every request when the secret is
 * shorter than the worker's minimum: a receiver whose secret is unset must not accept what anyone signed with ''.
 */
export function verifyStopEventSignature(input: StopEventSignatureInput): boolean {
  const { secret, body, timestamp, signature } = input;
  if (typeof secret !== 'string' || secret.length < MIN_EVENTS_SECRET_LENGTH) return false;
  if (!timestamp || !signature || !/^\d{1,12}$/.test(timestamp)) return false;
  const seconds = Number(timestamp);
  const nowSeconds = Math.floor((input.now ?? Date.now()) / 1000);
  if (Math.abs(nowSeconds - seconds) > (input.toleranceSeconds ?? SIGNATURE_TOLERANCE_SECONDS)) return false;
  const expected = Buffer.from(signStopEvent(secret, seconds, body));
  const given = Buffer.from(signature);
  return given.length === expected.length && timingSafeEqual(given, expected);
}
