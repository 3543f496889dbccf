// @ts-check
/**
 * @file Clock sync: an NTP-style estimate of the offset between this device's clock and the
 * server's, from `ping` samples. Pure: samples are fed in, nothing reads a clock here.
 *
 * For one sample, with t0 = our clock when the ping left, t1 = `server_recv`, t2 =
 * `server_send`, t3 = our clock when the reply arrived:
 *
 *     offset = ((t1 − t0) + (t2 − t3)) / 2     server_time ≈ local_time + offset
 *     rtt    = (t3 − t0) − (t2 − t1)
 *
 * The sample with the lowest RTT carries the least asymmetric delay, so the estimate is the
 * lowest-RTT sample among the last `keep` (8, like the Rust SDK).
 */

/** @typedef {{offsetMs: number, rttMs: number}} ClockEstimate */

/** Samples kept; the estimate is the lowest-RTT one among them. */
export const CLOCK_SAMPLES = 8;

export class ClockSync {
  /** @type {ClockEstimate[]} */
  #samples = [];
  #keep;

  /** @param {number} [keep] how many recent samples to choose from */
  constructor(keep = CLOCK_SAMPLES) {
    this.#keep = Math.max(1, keep);
  }

  /**
   * Add one ping sample (all in Unix ms). Samples with a negative RTT (a clock that jumped
   * backwards mid-sample) are ignored.
   * @param {number} t0 our clock when the ping was sent
   * @param {number} t1 the server's `server_recv`
   * @param {number} t2 the server's `server_send`
   * @param {number} t3 our clock when the reply arrived
   * @returns {ClockEstimate | null} this sample, or null if ignored
   */
  addSample(t0, t1, t2, t3) {
    const values = [t0, t1, t2, t3];
    if (!values.every(Number.isFinite)) return null;
    const sample = { offsetMs: (t1 - t0 + (t2 - t3)) / 2, rttMs: t3 - t0 - (t2 - t1) };
    if (sample.rttMs < 0) return null;
    this.#samples.push(sample);
    if (this.#samples.length > this.#keep) this.#samples.shift();
    return sample;
  }

  /**
   * A first, rough estimate from the `connected` push's `server_time` (no RTT correction), used
   * only until a real sample arrives. It counts as a sample with an infinite RTT.
   * @param {number} serverTime
   * @param {number} localNow
   */
  addRough(serverTime, localNow) {
    if (!Number.isFinite(serverTime) || !Number.isFinite(localNow)) return;
    if (this.#samples.length === 0) {
      this.#samples.push({ offsetMs: serverTime - localNow, rttMs: Number.POSITIVE_INFINITY });
    }
  }

  /** @returns {ClockEstimate | null} the lowest-RTT sample kept, or null before any */
  estimate() {
    /** @type {ClockEstimate | null} */
    let best = null;
    for (const s of this.#samples) {
      if (best === null || s.rttMs < best.rttMs) best = s;
    }
    return best;
  }

  /** How many samples are kept now. */
  get size() {
    return this.#samples.length;
  }

  /**
   * The server's clock at local time `localNow`, per the estimate (local time without one).
   * @param {number} localNow
   */
  serverNow(localNow) {
    return localNow + (this.estimate()?.offsetMs ?? 0);
  }

  /**
   * Milliseconds from local time `localNow` until the server instant `serverTimeMs` (negative
   * once it has passed).
   * @param {number} serverTimeMs
   * @param {number} localNow
   */
  msUntil(serverTimeMs, localNow) {
    return serverTimeMs - this.serverNow(localNow);
  }
}
