// Background jobs (POST /v1/jobs): the main form's request queued as a job that outlives this
// page. Its id is kept in localStorage, so a reload (or a closed and reopened tab) picks the job
// up again: its progress from GET /v1/jobs/{id}/events, its images from /v1/jobs/{id}/images/{i}.

import { ApiError, requestJson } from './api.js';
import { $, clearErrorsIn, el, pixelImage, plural, showErrorIn } from './dom.js';

const STORAGE = 'ddpm-job';
const TERMINAL = ['succeeded', 'failed', 'canceled'];
const RECONNECT_MS = 1000;
const MAX_RECONNECT_MS = 10_000;
const state = { api: null, card: null, id: null, controller: null, seeds: null };

/** Called once the model card is loaded; `fields()` is the main form's request body. */
export function setupJobs(api, card, fields) {
  Object.assign(state, { api, card });
  $('submit-job').disabled = false;
  if (!$('submit-job').dataset.wired) {
    $('submit-job').dataset.wired = 'true';
    $('submit-job').addEventListener('click', () => {
      if (!$('generate-form').reportValidity()) return;
      clearErrorsIn($('errors'));
      clearErrorsIn($('job-errors'));
      submit(fields()).catch((e) => failed(e, 'Could not queue the job'));
    });
    $('job-cancel').addEventListener('click', () => cancel().catch((e) => failed(e, 'Could not cancel the job')));
    $('job-forget').addEventListener('click', forget);
  }
  const stored = localStorage.getItem(STORAGE);
  if (stored && stored !== state.id) follow(stored, true);
}

function box() {
  return $('job-box');
}

/** Errors go to the job box, or to the form's own box while no job is shown (a refused submission). */
function failed(error, context) {
  showErrorIn(box().hidden ? $('errors') : $('job-errors'), error, context);
}

async function submit(fields) {
  const { preview_every: _, ...body } = fields; // a job's events carry no previews
  const job = await state.api.json('v1/jobs', { method: 'POST', json: requestJson(body) });
  localStorage.setItem(STORAGE, job.id);
  follow(job.id, false);
}

/** The job, with its seeds as exact decimal strings (the JSON numbers round past 2^53). */
async function getJob(id, signal) {
  const text = await (await state.api.send(`v1/jobs/${encodeURIComponent(id)}`, { signal })).text();
  const job = JSON.parse(text);
  const seeds = /"seeds":\[([\d,\s]*)\]/.exec(text);
  job.seeds = seeds ? seeds[1].split(',').map((s) => s.trim()).filter(Boolean) : job.seeds.map(String);
  return job;
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => { clearTimeout(timer); reject(new DOMException('stopped', 'AbortError')); });
  });
}

/** Shows job `id` and follows it to its end: its state now, then its events, reconnecting if the stream breaks. */
async function follow(id, resumed) {
  state.controller?.abort();
  const controller = new AbortController();
  Object.assign(state, { id, controller });
  const { signal } = controller;
  clearErrorsIn($('job-errors'));
  $('job-results').replaceChildren();
  Object.assign(box().dataset, { id, events: '0', resumed: String(resumed), status: '' });
  box().hidden = false;
  $('job-id').textContent = id;
  $('job-cancel').disabled = false;
  $('job-step-text').textContent = resumed ? 'Picking the job up again…' : 'Queued…';
  try {
    for (let failures = 0; ; failures++) {
      const job = await reachable(() => getJob(id, signal), signal);
      state.seeds = job.seeds;
      show(job);
      if (TERMINAL.includes(job.status)) return await ended(job, signal);
      if (await watch(id, signal)) return await ended(await reachable(() => getJob(id, signal), signal), signal);
      // The stream broke (a proxy's timeout, a replica restarting): read the job again, soon.
      await sleep(Math.min(RECONNECT_MS * 2 ** failures, MAX_RECONNECT_MS), signal);
    }
  } catch (e) {
    if (e.name === 'AbortError') return;
    if (e instanceof ApiError && (e.status === 404 || e.status === 410)) {
      localStorage.removeItem(STORAGE);
      box().dataset.status = 'gone';
      $('job-status').textContent = e.status === 410 ? 'expired' : 'gone';
      $('job-step-text').textContent = '';
      $('job-cancel').disabled = true;
    }
    failed(e, `Job ${id} cannot be read`);
  }
}

/** `read()`, retried while the server cannot be reached or answers 5xx (a restart): the job is kept by the server. */
async function reachable(read, signal) {
  for (let wait = RECONNECT_MS; ; wait = Math.min(2 * wait, MAX_RECONNECT_MS)) {
    try {
      const result = await read();
      clearErrorsIn($('job-errors'));
      return result;
    } catch (e) {
      if (!(e instanceof ApiError) || (e.status !== 0 && e.status < 500)) throw e;
      failed(e, `Job ${state.id}: the server cannot be read now; trying again in ${wait / 1000} s`);
      await sleep(wait, signal);
    }
  }
}

/** Reads the job's events until it ends (true) or the stream breaks (false). */
async function watch(id, signal) {
  let events;
  try {
    events = await state.api.events(`v1/jobs/${encodeURIComponent(id)}/events`, { signal });
    for await (const { event, data } of events) {
      if (event === 'queued') show({ status: 'queued', position: data.position });
      else if (event === 'progress') show({ status: 'running', progress: data, n: data.n });
      // The event's seed is a JSON number (rounded past 2^53): the job's exact seeds name the image.
      else if (event === 'image') await addImage(id, data.index, state.seeds?.[data.index] ?? null, data.png_base64);
      else if (event === 'done' || event === 'error') return true;
    }
  } catch (e) {
    if (e.name === 'AbortError' || (e instanceof ApiError && e.status >= 400 && e.status < 500)) throw e;
  }
  return false;
}

function show(job) {
  const b = box();
  b.dataset.status = job.status;
  let text = job.status;
  if (job.status === 'queued' && job.position !== undefined && job.position !== null) {
    text = job.position > 0 ? `queued behind ${plural(job.position, 'image')}` : 'queued: starting at the next step';
  }
  $('job-status').textContent = text;
  const p = job.progress;
  if (p && job.status === 'running') {
    $('job-progress').max = p.steps;
    $('job-progress').value = p.step;
    const n = job.n ?? p.n;
    $('job-step-text').textContent = `Step ${p.step} of ${p.steps} · ${p.images_done} of ${plural(n, 'image')} done`;
    b.dataset.events = String(Number(b.dataset.events) + 1);
    b.dataset.step = String(p.step);
  }
}

async function ended(job, signal) {
  show(job);
  $('job-cancel').disabled = true;
  if (job.status === 'succeeded') {
    $('job-progress').value = $('job-progress').max;
    for (const image of job.images) await addImage(job.id, image.index, job.seeds[image.index], null, signal);
    $('job-step-text').textContent = `Done: ${plural(job.images.length, 'image')}, ${job.steps} steps`;
  } else if (job.status === 'failed') {
    failed(new ApiError(job.error?.status ?? 0, [job.error?.message ?? 'unknown error']), 'The job failed');
    $('job-step-text').textContent = 'Failed';
  } else {
    $('job-step-text').textContent = 'Canceled';
  }
  box().dataset.images = String($('job-results').children.length);
}

/** Image `index` of the job, from the event's PNG or else from /v1/jobs/{id}/images/{index}. */
async function addImage(id, index, seed, png, signal) {
  const list = $('job-results');
  if (id !== state.id || list.querySelector(`[data-index="${index}"]`)) return;
  const src = png ? `data:image/png;base64,${png}` : await state.api.pngDataUrl(`v1/jobs/${encodeURIComponent(id)}/images/${index}`);
  if (signal?.aborted || id !== state.id || list.querySelector(`[data-index="${index}"]`)) return;
  const size = state.card.image_size * Math.max(1, Math.floor(128 / state.card.image_size));
  const name = seed ?? String(index);
  const item = el('li', { className: 'result', dataset: { index: String(index), seed: seed ?? '' } },
    el('figure', {}, pixelImage(src, `Job image ${index + 1}${seed ? `, seed ${seed}` : ''}`, size),
      el('figcaption', {}, `#${index + 1}${seed ? ` · seed ${seed}` : ''}`)),
    el('div', { className: 'actions' }, el('a', { href: src, download: `ddpm-job-${name}.png`, className: 'button' }, 'Download PNG')));
  item.style.setProperty('--image', `${size}px`);
  const after = [...list.children].find((li) => Number(li.dataset.index) > index);
  list.insertBefore(item, after ?? null);
}

/** DELETE /v1/jobs/{id}: the job's rows leave the batch at the next step. */
async function cancel() {
  const id = state.id;
  state.controller?.abort(); // first: the stream's own end must not race the answer below
  $('job-cancel').disabled = true;
  $('job-step-text').textContent = 'Canceling…';
  let job;
  try {
    job = await state.api.json(`v1/jobs/${encodeURIComponent(id)}`, { method: 'DELETE' });
  } catch (e) {
    if (id === state.id) follow(id, true);
    throw e;
  }
  if (id !== state.id) return;
  job.seeds = job.seeds.map(String);
  await ended(job);
}

function forget() {
  state.controller?.abort();
  localStorage.removeItem(STORAGE);
  state.id = null;
  box().hidden = true;
  $('job-results').replaceChildren();
}
