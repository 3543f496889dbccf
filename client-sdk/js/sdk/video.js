// @ts-check
/**
 * @file Live video in the browser: publish the camera with WHIP (RFC 9725) and play a room
 * with WHEP, both against Ferry's endpoints (`POST /whip/{room}`, `POST /whep/{room}`), and
 * read the WebRTC statistics a player or a test needs.
 *
 * The HTTP side follows RFC 9725 (WHEP mirrors it):
 * - `POST` the SDP offer (`Content-Type: application/sdp`, `Authorization: Bearer <token>`);
 *   the server answers `201 Created` with the SDP answer, a `Location` (the session
 *   resource) and an `ETag`.
 * - ICE candidates: by default the offer is sent once ICE gathering is complete (or after
 *   `gatherTimeoutMs`), carrying every candidate, and nothing is trickled. With
 *   `trickle: true` the offer goes at once and candidates follow in `PATCH` requests
 *   (`Content-Type: application/trickle-ice-sdpfrag`, `If-Match: <etag>`); a server that
 *   answers 405 or 501 does not support trickle, and the client stops trickling.
 * - `DELETE` on the resource ends the session.
 * - ICE servers: the `201` may carry `Link: <stun:...>; rel="ice-server"` headers (RFC 9725
 *   §4.6), TURN entries with `username`, `credential` and `credential-type="password"`. They
 *   are parsed (`iceServersFromLink`), set on the peer connection with `setConfiguration`
 *   before the answer is applied, and remembered per server origin so the next session (a
 *   retry, a reconnect) gathers with them from its first offer. Ferry's SFU is ICE-lite and
 *   offers its public host candidates, so a client reaches it without STUN; only a TURN relay
 *   matters, for networks that block UDP to the server.
 */

/**
 * @typedef {object} SessionOptions
 * @property {string} endpoint WHIP or WHEP endpoint URL, e.g. `/whep/demo` (relative URLs
 *   resolve against the page).
 * @property {string} token Bearer token (a host token for WHIP, any room token for WHEP).
 * @property {RTCIceServer[]} [iceServers] STUN/TURN servers. By default, those the server
 *   announced in `Link` headers to an earlier session of this page (none at first); the
 *   `Link` headers of each answer are applied either way.
 * @property {boolean} [trickle] trickle candidates with PATCH instead of waiting for gathering.
 * @property {number} [gatherTimeoutMs] longest wait for ICE gathering without trickle (2 s).
 * @property {typeof fetch} [fetch] fetch implementation (the global by default).
 */

/** An HTTP error of a WHIP/WHEP request. */
export class VideoSessionError extends Error {
  /**
   * @param {string} message
   * @param {number} status HTTP status (0 when the request did not complete)
   * @param {string} body the response body (Ferry's JSON error, when there is one)
   */
  constructor(message, status, body) {
    super(message);
    this.name = 'VideoSessionError';
    this.status = status;
    this.body = body;
  }
}

/**
 * Split a header value on `sep` outside `<...>` and quoted strings.
 * @param {string} value
 * @param {string} sep
 * @returns {string[]}
 */
function splitOutside(value, sep) {
  /** @type {string[]} */
  const out = [];
  let cur = '';
  let quoted = false;
  let angled = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (quoted) {
      cur += c;
      if (c === '\\' && i + 1 < value.length) cur += value[++i];
      else if (c === '"') quoted = false;
    } else if (angled) {
      cur += c;
      if (c === '>') angled = false;
    } else if (c === '"') {
      quoted = true;
      cur += c;
    } else if (c === '<') {
      angled = true;
      cur += c;
    } else if (c === sep) {
      out.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  out.push(cur);
  return out.map((p) => p.trim()).filter((p) => p !== '');
}

/**
 * A link parameter's value: a quoted string (with `\` escapes) or a token.
 * @param {string} raw
 */
function paramValue(raw) {
  const v = raw.trim();
  if (v.startsWith('"') && v.endsWith('"') && v.length >= 2) return v.slice(1, -1).replace(/\\(.)/g, '$1');
  return v;
}

/**
 * The ICE servers announced in `Link` header values (RFC 9725 §4.6; RFC 8288 syntax): every
 * link with `rel="ice-server"` whose target is a `stun:`, `stuns:`, `turn:` or `turns:` URI,
 * with its `username` and `credential` (only `credential-type="password"`, the default, is
 * usable by browsers). Other links are ignored; a malformed one is skipped.
 * @param {string | string[] | null | undefined} header one `Link` value, several, or the
 *   comma-joined value `fetch` gives
 * @returns {RTCIceServer[]}
 */
export function iceServersFromLink(header) {
  if (!header) return [];
  const values = Array.isArray(header) ? header : [header];
  /** @type {RTCIceServer[]} */
  const servers = [];
  for (const value of values) {
    for (const link of splitOutside(value, ',')) {
      const m = /^<([^>]*)>(.*)$/s.exec(link);
      if (!m) continue;
      const url = m[1].trim();
      /** @type {Record<string, string>} */
      const params = {};
      for (const part of splitOutside(m[2], ';')) {
        const eq = part.indexOf('=');
        const name = (eq < 0 ? part : part.slice(0, eq)).trim().toLowerCase();
        if (name && !(name in params)) params[name] = eq < 0 ? '' : paramValue(part.slice(eq + 1));
      }
      const rels = (params.rel ?? '').toLowerCase().split(/\s+/);
      if (!rels.includes('ice-server')) continue;
      if (!/^(stun|stuns|turn|turns):/i.test(url)) continue;
      if (params['credential-type'] && params['credential-type'].toLowerCase() !== 'password') continue;
      /** @type {RTCIceServer} */
      const server = { urls: url };
      if (params.username !== undefined) server.username = params.username;
      if (params.credential !== undefined) server.credential = params.credential;
      servers.push(server);
    }
  }
  return servers;
}

/** ICE servers learned from `Link` headers, per server origin, for the next session. */
/** @type {Map<string, RTCIceServer[]>} */
const learnedIceServers = new Map();

/**
 * The HTTP side of one WHIP or WHEP session: create, trickle, delete. No WebRTC here.
 */
export class IceSessionResource {
  /** @type {string | null} absolute URL of the session resource (from `Location`) */
  location = null;
  /** @type {string | null} the resource's entity tag (from `ETag`) */
  etag = null;
  /** Whether the server accepts trickled candidates (false after 405/501). */
  trickleSupported = true;
  /** @type {RTCIceServer[]} ICE servers from the `201`'s `Link: rel="ice-server"` headers */
  iceServers = [];
  #endpoint;
  #token;
  #fetch;

  /**
   * @param {string} endpoint
   * @param {string} token
   * @param {typeof fetch} [fetchImpl]
   */
  constructor(endpoint, token, fetchImpl) {
    const base = typeof location !== 'undefined' ? location.href : undefined;
    this.#endpoint = new URL(endpoint, base).href;
    this.#token = token;
    this.#fetch = fetchImpl ?? globalThis.fetch.bind(globalThis);
  }

  /** The endpoint's absolute URL. */
  get endpoint() {
    return this.#endpoint;
  }

  /**
   * POST the offer; returns the SDP answer.
   * @param {string} offerSdp
   * @returns {Promise<string>}
   */
  async create(offerSdp) {
    const res = await this.#request(this.#endpoint, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${this.#token}` },
      body: offerSdp,
    });
    const body = await res.text();
    if (res.status !== 201) {
      throw new VideoSessionError(`${this.#endpoint} answered ${res.status}: ${errorText(body)}`, res.status, body);
    }
    const where = res.headers.get('Location');
    if (!where) throw new VideoSessionError('201 without a Location header', res.status, body);
    this.location = new URL(where, this.#endpoint).href;
    this.etag = res.headers.get('ETag');
    this.iceServers = iceServersFromLink(res.headers.get('Link'));
    return body;
  }

  /**
   * PATCH a trickle-ice-sdpfrag. Resolves false when the server does not support trickle.
   * @param {string} fragment
   * @returns {Promise<boolean>}
   */
  async patch(fragment) {
    if (!this.location || !this.trickleSupported) return false;
    /** @type {Record<string, string>} */
    const headers = {
      'Content-Type': 'application/trickle-ice-sdpfrag',
      Authorization: `Bearer ${this.#token}`,
    };
    if (this.etag) headers['If-Match'] = this.etag;
    const res = await this.#request(this.location, { method: 'PATCH', headers, body: fragment });
    if (res.status === 405 || res.status === 501) {
      this.trickleSupported = false;
      return false;
    }
    if (res.status !== 204 && res.status !== 200) {
      const body = await res.text();
      throw new VideoSessionError(`PATCH answered ${res.status}: ${errorText(body)}`, res.status, body);
    }
    const etag = res.headers.get('ETag');
    if (etag) this.etag = etag;
    return true;
  }

  /** DELETE the session (errors are ignored: the peer connection is closed anyway). */
  async delete() {
    const where = this.location;
    this.location = null;
    if (!where) return;
    try {
      await this.#fetch(where, { method: 'DELETE', headers: { Authorization: `Bearer ${this.#token}` } });
    } catch {
      // The server ends sessions whose peer goes away.
    }
  }

  /**
   * @param {string} url
   * @param {RequestInit} init
   */
  async #request(url, init) {
    try {
      return await this.#fetch(url, init);
    } catch (e) {
      throw new VideoSessionError(`${init.method} ${url} failed: ${e instanceof Error ? e.message : String(e)}`, 0, '');
    }
  }
}

/**
 * Ferry's JSON error message, or the body as text.
 * @param {string} body
 */
function errorText(body) {
  try {
    const parsed = JSON.parse(body);
    if (parsed?.error?.message) return `${parsed.error.code}: ${parsed.error.message}`;
  } catch {
    // not JSON
  }
  return body.slice(0, 200) || '(empty body)';
}

/**
 * A trickle-ice-sdpfrag (RFC 8840) with `candidates` for the session described by
 * `localSdp`: its ICE credentials, then the first media section's `m=` line and `mid` (all
 * media are bundled on one transport) with the candidates, and `a=end-of-candidates` when
 * gathering is complete.
 * @param {string} localSdp
 * @param {string[]} candidates `candidate:...` attribute values
 * @param {boolean} complete
 * @returns {string}
 */
export function trickleFragment(localSdp, candidates, complete) {
  const lines = localSdp.split(/\r?\n/);
  const ufrag = lines.find((l) => l.startsWith('a=ice-ufrag:'));
  const pwd = lines.find((l) => l.startsWith('a=ice-pwd:'));
  const mline = lines.find((l) => l.startsWith('m='));
  const mid = lines.find((l) => l.startsWith('a=mid:'));
  const out = [];
  if (ufrag) out.push(ufrag);
  if (pwd) out.push(pwd);
  if (mline) out.push(mline.replace(/^m=(\S+) \d+/, 'm=$1 9'));
  if (mid) out.push(mid);
  for (const c of candidates) out.push(`a=${c.startsWith('candidate:') ? c : `candidate:${c}`}`);
  if (complete) out.push('a=end-of-candidates');
  return `${out.join('\r\n')}\r\n`;
}

/**
 * Wait until ICE gathering is complete, or `timeoutMs`.
 * @param {RTCPeerConnection} pc
 * @param {number} timeoutMs
 * @returns {Promise<void>}
 */
function gatheringComplete(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === 'complete') done();
    };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

/**
 * Statistics of a playing or publishing session, from `getStats()`.
 * @typedef {object} VideoStats
 * @property {number} framesDecoded inbound video frames decoded (player)
 * @property {number} framesReceived
 * @property {number} packetsLost inbound, audio and video
 * @property {number} jitter inbound video jitter, seconds
 * @property {number} freezeCount inbound video freezes
 * @property {number} frameWidth
 * @property {number} frameHeight
 * @property {number} bytesReceived
 * @property {number} framesEncoded outbound video frames encoded (publisher)
 * @property {number} packetsSent outbound, audio and video
 * @property {number} bytesSent
 * @property {number | null} timeToFirstFrameMs from `start` to the first decoded frame
 *   (player), or null until then
 */

/**
 * Read the statistics of a peer connection.
 * @param {RTCPeerConnection} pc
 * @returns {Promise<VideoStats>}
 */
export async function readVideoStats(pc) {
  /** @type {VideoStats} */
  const s = {
    framesDecoded: 0, framesReceived: 0, packetsLost: 0, jitter: 0, freezeCount: 0,
    frameWidth: 0, frameHeight: 0, bytesReceived: 0, framesEncoded: 0, packetsSent: 0,
    bytesSent: 0, timeToFirstFrameMs: null,
  };
  const report = await pc.getStats();
  report.forEach((/** @type {any} */ r) => {
    if (r.type === 'inbound-rtp') {
      s.packetsLost += r.packetsLost ?? 0;
      s.bytesReceived += r.bytesReceived ?? 0;
      if (r.kind === 'video') {
        s.framesDecoded += r.framesDecoded ?? 0;
        s.framesReceived += r.framesReceived ?? 0;
        s.jitter = Math.max(s.jitter, r.jitter ?? 0);
        s.freezeCount += r.freezeCount ?? 0;
        s.frameWidth = Math.max(s.frameWidth, r.frameWidth ?? 0);
        s.frameHeight = Math.max(s.frameHeight, r.frameHeight ?? 0);
      }
    } else if (r.type === 'outbound-rtp') {
      s.packetsSent += r.packetsSent ?? 0;
      s.bytesSent += r.bytesSent ?? 0;
      if (r.kind === 'video') s.framesEncoded += r.framesEncoded ?? 0;
    }
  });
  return s;
}

/** The WebRTC part both directions share: the peer connection, the offer/answer, trickle. */
class VideoSession {
  /** @type {RTCPeerConnection | null} */
  pc = null;
  /** @type {IceSessionResource} */
  resource;
  #opts;
  /** Candidates gathered before the resource exists (trickle mode). */
  /** @type {string[]} */
  #pendingCandidates = [];
  #gatheringDone = false;
  /** Serializes PATCH requests so the ETag sequence is kept. */
  #patching = Promise.resolve();
  /** @type {(state: RTCPeerConnectionState) => void} */
  onstatechange = () => {};

  /** @param {SessionOptions} options */
  constructor(options) {
    this.#opts = {
      iceServers: options.iceServers ?? null,
      trickle: options.trickle ?? false,
      gatherTimeoutMs: options.gatherTimeoutMs ?? 2000,
    };
    this.resource = new IceSessionResource(options.endpoint, options.token, options.fetch);
  }

  /** @returns {RTCPeerConnection} */
  newPeerConnection() {
    const origin = new URL(this.resource.endpoint).origin;
    const iceServers = this.#opts.iceServers ?? learnedIceServers.get(origin) ?? [];
    const pc = new RTCPeerConnection({ iceServers, bundlePolicy: 'max-bundle' });
    this.pc = pc;
    pc.addEventListener('connectionstatechange', () => this.onstatechange(pc.connectionState));
    if (this.#opts.trickle) {
      pc.addEventListener('icecandidate', (ev) => {
        if (ev.candidate && ev.candidate.candidate) this.#pendingCandidates.push(ev.candidate.candidate);
        else this.#gatheringDone = true;
        this.#flushCandidates();
      });
    }
    return pc;
  }

  /** Create the offer, send it, apply the answer. */
  async negotiate() {
    const pc = this.pc;
    if (!pc) throw new Error('no peer connection');
    await pc.setLocalDescription(await pc.createOffer());
    if (!this.#opts.trickle) await gatheringComplete(pc, this.#opts.gatherTimeoutMs);
    const offer = pc.localDescription?.sdp ?? '';
    const answer = await this.resource.create(offer);
    this.#applyLinkIceServers(pc);
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    this.#flushCandidates();
  }

  /**
   * Add the servers of the answer's `Link` headers to the connection (they serve the
   * gathering still running and any ICE restart) and remember them for the next session.
   * @param {RTCPeerConnection} pc
   */
  #applyLinkIceServers(pc) {
    const announced = this.resource.iceServers;
    if (announced.length === 0) return;
    learnedIceServers.set(new URL(this.resource.endpoint).origin, announced);
    const config = pc.getConfiguration();
    const have = new Set((config.iceServers ?? []).map((s) => JSON.stringify(s)));
    const added = announced.filter((s) => !have.has(JSON.stringify(s)));
    if (added.length === 0) return;
    try {
      pc.setConfiguration({ ...config, iceServers: [...(config.iceServers ?? []), ...added] });
    } catch (e) {
      console.warn('ferry: the announced ICE servers could not be applied', e);
    }
  }

  #flushCandidates() {
    if (!this.resource.location || !this.pc) return;
    if (this.#pendingCandidates.length === 0 && !this.#gatheringDone) return;
    const candidates = this.#pendingCandidates;
    this.#pendingCandidates = [];
    const complete = this.#gatheringDone;
    this.#gatheringDone = false;
    const sdp = this.pc.localDescription?.sdp ?? '';
    this.#patching = this.#patching
      .then(() => this.resource.patch(trickleFragment(sdp, candidates, complete)))
      .then(() => undefined, (e) => console.warn('ferry: trickle PATCH failed', e));
  }

  /**
   * End the session: DELETE the resource (so the server ends it at once, as RFC 9725 asks),
   * then close the peer connection.
   */
  async stop() {
    const pc = this.pc;
    this.pc = null;
    await this.resource.delete();
    pc?.close();
  }

  /** @returns {Promise<VideoStats>} */
  async stats() {
    if (!this.pc) throw new Error('not started');
    return readVideoStats(this.pc);
  }
}

/**
 * @typedef {SessionOptions & {simulcast?: boolean}} PublisherOptions
 * With `simulcast: true` the camera is sent in three layers (full, half and quarter
 * resolution) for the SFU to pick per viewer.
 */

/**
 * The host side: publish a camera (or any MediaStream) with WHIP.
 *
 * ```js
 * const publisher = new WhipPublisher({ endpoint: '/whip/demo', token: hostToken });
 * const stream = await publisher.startCamera(previewVideo);
 * // ... later
 * await publisher.stop();
 * ```
 */
export class WhipPublisher {
  #session;
  #simulcast;
  /** @type {MediaStream | null} */
  stream = null;
  /** Whether `stop()` should also stop the tracks (true when `startCamera` opened them). */
  #ownsStream = false;

  /** @param {PublisherOptions} options */
  constructor(options) {
    this.#session = new VideoSession(options);
    this.#simulcast = options.simulcast ?? false;
  }

  /** The peer connection, once started. */
  get pc() {
    return this.#session.pc;
  }

  /** The WHIP session resource URL, once created. */
  get resourceUrl() {
    return this.#session.resource.location;
  }

  /** @param {(state: RTCPeerConnectionState) => void} fn called on connection state changes */
  set onstatechange(fn) {
    this.#session.onstatechange = fn;
  }

  /**
   * Open the camera and microphone (`getUserMedia`), show them muted in `preview` if given,
   * and publish them.
   * @param {HTMLVideoElement} [preview]
   * @param {MediaStreamConstraints} [constraints]
   * @returns {Promise<MediaStream>}
   */
  async startCamera(preview, constraints = { video: { width: 1280, height: 720 }, audio: true }) {
    const stream = await navigator.mediaDevices.getUserMedia(constraints);
    this.#ownsStream = true;
    if (preview) {
      preview.muted = true;
      preview.srcObject = stream;
      preview.play().catch(() => {});
    }
    try {
      await this.publish(stream);
    } catch (e) {
      for (const t of stream.getTracks()) t.stop();
      throw e;
    }
    return stream;
  }

  /**
   * Publish `stream` (send-only).
   * @param {MediaStream} stream
   */
  async publish(stream) {
    this.stream = stream;
    const pc = this.#session.newPeerConnection();
    for (const track of stream.getTracks()) {
      /** @type {RTCRtpTransceiverInit} */
      const init = { direction: 'sendonly', streams: [stream] };
      if (track.kind === 'video' && this.#simulcast) {
        init.sendEncodings = [
          { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 200_000 },
          { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 600_000 },
          { rid: 'f', maxBitrate: 1_500_000 },
        ];
      }
      pc.addTransceiver(track, init);
    }
    try {
      await this.#session.negotiate();
    } catch (e) {
      pc.close();
      this.#session.pc = null;
      throw e;
    }
  }

  /** Stop publishing: DELETE the WHIP session, close the connection, release the camera. */
  async stop() {
    await this.#session.stop();
    if (this.#ownsStream && this.stream) for (const t of this.stream.getTracks()) t.stop();
    this.stream = null;
  }

  /** @returns {Promise<VideoStats>} */
  stats() {
    return this.#session.stats();
  }
}

/**
 * The viewer side: play a room's stream with WHEP into a `<video>`.
 *
 * ```js
 * const player = new WhepPlayer({ endpoint: '/whep/demo', token });
 * await player.play(videoElement);
 * const stats = await player.stats(); // framesDecoded, packetsLost, jitter, freezeCount...
 * ```
 */
export class WhepPlayer {
  #session;
  /** @type {MediaStream | null} */
  stream = null;
  #startedAt = 0;
  /** @type {number | null} */
  #firstFrameMs = null;
  /** @type {ReturnType<typeof setInterval> | null} */
  #firstFrameTimer = null;
  /** @type {Array<(ms: number) => void>} */
  #firstFrameWaiters = [];

  /** @param {SessionOptions} options */
  constructor(options) {
    this.#session = new VideoSession(options);
  }

  /** The peer connection, once started. */
  get pc() {
    return this.#session.pc;
  }

  /** The WHEP session resource URL, once created. */
  get resourceUrl() {
    return this.#session.resource.location;
  }

  /** @param {(state: RTCPeerConnectionState) => void} fn called on connection state changes */
  set onstatechange(fn) {
    this.#session.onstatechange = fn;
  }

  /**
   * Start playing (receive-only audio and video) into `video` if given.
   * @param {HTMLVideoElement} [video]
   * @returns {Promise<MediaStream>}
   */
  async play(video) {
    this.#startedAt = performance.now();
    this.#firstFrameMs = null;
    const stream = new MediaStream();
    this.stream = stream;
    const pc = this.#session.newPeerConnection();
    pc.addTransceiver('video', { direction: 'recvonly', streams: [stream] });
    pc.addTransceiver('audio', { direction: 'recvonly', streams: [stream] });
    pc.addEventListener('track', (ev) => {
      if (!stream.getTracks().includes(ev.track)) stream.addTrack(ev.track);
    });
    if (video) {
      video.srcObject = stream;
      video.play().catch(() => {
        // Autoplay with sound may be refused until the viewer interacts; the page shows
        // a play control (and muted autoplay is always allowed).
      });
    }
    try {
      await this.#session.negotiate();
    } catch (e) {
      pc.close();
      this.#session.pc = null;
      throw e;
    }
    this.#watchFirstFrame();
    return stream;
  }

  /**
   * Resolves with the time to first frame (ms from `play()` to the first decoded video frame).
   * @returns {Promise<number>}
   */
  firstFrame() {
    if (this.#firstFrameMs !== null) return Promise.resolve(this.#firstFrameMs);
    return new Promise((resolve) => this.#firstFrameWaiters.push(resolve));
  }

  #watchFirstFrame() {
    if (this.#firstFrameTimer) clearInterval(this.#firstFrameTimer);
    this.#firstFrameTimer = setInterval(async () => {
      const pc = this.#session.pc;
      if (!pc) return;
      const s = await readVideoStats(pc);
      if (s.framesDecoded > 0 && this.#firstFrameMs === null) {
        this.#firstFrameMs = performance.now() - this.#startedAt;
        if (this.#firstFrameTimer) clearInterval(this.#firstFrameTimer);
        this.#firstFrameTimer = null;
        for (const w of this.#firstFrameWaiters.splice(0)) w(this.#firstFrameMs);
      }
    }, 50);
  }

  /** Stop playing: DELETE the WHEP session and close the connection. */
  async stop() {
    if (this.#firstFrameTimer) clearInterval(this.#firstFrameTimer);
    this.#firstFrameTimer = null;
    await this.#session.stop();
    this.stream = null;
  }

  /** @returns {Promise<VideoStats>} */
  async stats() {
    const s = await this.#session.stats();
    s.timeToFirstFrameMs = this.#firstFrameMs;
    return s;
  }
}
