// @ts-check
/**
 * @file Reconnect delays: exponential backoff with jitter, the same policy as the Rust SDK
 * (`backoff` in client-sdk/src/client.rs). Pure: the random source is a parameter.
 */

/**
 * The delay before reconnect attempt `attempt` (1 for the first retry): `min` doubled per
 * attempt, capped at `max`, then a random point in [d/2, d] so that many clients dropped at
 * once do not come back at once.
 * @param {number} attempt 1, 2, 3... (0 is treated as 1)
 * @param {number} minMs First delay (the SDK uses 100 ms).
 * @param {number} maxMs Cap (the SDK uses 10 s).
 * @param {() => number} [random] Uniform in [0, 1); `Math.random` by default.
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, minMs, maxMs, random = Math.random) {
  const doublings = Math.min(Math.max(attempt, 1) - 1, 16);
  const d = Math.min(minMs * 2 ** doublings, maxMs);
  const half = d / 2;
  return half + random() * half;
}
