// The API client: the model card, the noise schedule and the progress stream, with the API's
// error bodies turned into messages a person can read.

import { readEvents } from './sse.js';

/** An HTTP error from the API: `messages` are the server's own words, one per problem. */
export class ApiError extends Error {
  constructor(status, messages, retryAfter = null) {
    super(messages.join('\n'));
    this.name = 'ApiError';
    this.status = status;
    this.messages = messages;
    this.retryAfter = retryAfter;
  }
}

/**
 * Reads an error response: 422 bodies are {"detail": [{"msg", ...}]} and every msg names the
 * field and the limit; the other errors are {"detail": "..."}; 429 and 503 add Retry-After.
 */
export async function errorFrom(response) {
  let detail = null;
  try {
    detail = (await response.json()).detail;
  } catch {
    // not JSON, e.g. a proxy's HTML error page
  }
  let messages;
  if (Array.isArray(detail)) messages = detail.map((e) => (typeof e?.msg === 'string' ? e.msg : JSON.stringify(e)));
  else if (typeof detail === 'string') messages = [detail];
  else messages = [`HTTP ${response.status} ${response.statusText}`.trim()];
  const retry = response.headers.get('Retry-After');
  const retryAfter = retry !== null && /^\d+$/.test(retry) ? Number(retry) : null;
  return new ApiError(response.status, messages, retryAfter);
}

/**
 * The JSON body with the seed written as the exact digits typed. Seeds go up to 2^63 - 1, and a
 * JavaScript number is exact only up to 2^53, so JSON.stringify would send a different seed.
 * Anything that is not plain digits is sent as a string, for the server to reject by name.
 */
export function requestJson(fields) {
  const { seed, ...rest } = fields;
  return withSeed(JSON.stringify(rest), seed);
}

function withSeed(json, seed) {
  if (seed === undefined || seed === null || seed === '') return json;
  const value = /^\d+$/.test(String(seed)) ? String(seed).replace(/^0+(?=\d)/, '') : JSON.stringify(String(seed));
  return `${json.slice(0, -1)}${json === '{}' ? '' : ','}"seed":${value}}`;
}

const BIG = '#bigint#'; // a marker no field's text holds (base64 has no '#')

/**
 * requestJson for bodies with nested seeds (an interpolation's ends): a BigInt anywhere in
 * `fields` is written as its exact digits, which JSON.stringify would refuse.
 */
export function bigJson(fields) {
  const { seed, ...rest } = fields;
  const json = JSON.stringify(rest, (_, v) => (typeof v === 'bigint' ? `${BIG}${v}` : v))
    .replaceAll(new RegExp(`"${BIG}(\\d+)"`, 'g'), '$1');
  return withSeed(json, seed);
}

export class Api {
  /** @param {string} base  the server's URL, '' for the page's own origin and path */
  constructor(base = '') {
    this.base = base;
    this.key = '';
  }

  headers(extra = {}) {
    return this.key ? { ...extra, Authorization: `Bearer ${this.key}` } : extra;
  }

  getJson(path) {
    return this.json(path);
  }

  /** GET /v1/model: sizes, classes, samplers, defaults, limits, whether keys are required. */
  model() {
    return this.getJson('v1/model');
  }

  /** GET /v1/schedule: alphas_cumprod[i] is alpha-bar at t = i + 1. */
  schedule() {
    return this.getJson('v1/schedule');
  }

  /**
   * POST /generate/stream. Resolves once the server has accepted the request, to
   * {seed, requestId, events}: `seed` is the first image's seed as a decimal string (from the
   * X-Seed header, exact, unlike the JSON numbers of the events), `events` yields
   * {event, data}. Rejects with ApiError for 4xx/5xx answers.
   */
  generate(fields, { signal } = {}) {
    return this.stream('generate/stream', requestJson(fields), { signal });
  }

  /** A streaming POST (/generate/stream, /v1/edits/stream, ...) with a JSON body already written. */
  async stream(path, json, { signal } = {}) {
    const response = await this.send(path, { method: 'POST', body: json, signal, accept: 'text/event-stream' });
    return {
      seed: response.headers.get('X-Seed'),
      seeds: response.headers.get('X-Seeds')?.split(',') ?? null,
      requestId: response.headers.get('X-Request-ID'),
      events: readEvents(response.body),
    };
  }

  /** GET of server-sent events (a job's /events): fetch, not EventSource, so that the key is sent. */
  async events(path, { signal } = {}) {
    const response = await this.send(path, { signal, accept: 'text/event-stream' });
    return readEvents(response.body);
  }

  /** A JSON request; `json` is the body, already written (requestJson). */
  async json(path, { method = 'GET', json, signal } = {}) {
    const response = await this.send(path, { method, body: json, signal });
    return response.json();
  }

  /** A PNG of the API (a job's image) as a data: URL, as the streams give them. */
  async pngDataUrl(path) {
    const blob = await (await this.send(path, { accept: 'image/png' })).blob();
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result.replace(/^data:[^;,]*/, 'data:image/png'));
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
  }

  /** fetch with the key, the network's failures and the API's error bodies turned into ApiError. */
  async send(path, { method = 'GET', body, signal, accept = 'application/json' } = {}) {
    const headers = this.headers(body === undefined ? { Accept: accept } : { Accept: accept, 'Content-Type': 'application/json' });
    let response;
    try {
      response = await fetch(this.base + path, { method, headers, body, signal });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, [`could not reach the server (${e.message})`]);
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }
}
