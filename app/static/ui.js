// The page: the form built from the model card, one generation at a time over the progress
// stream, the images, the denoising chain and the forward process.

import { Api, ApiError } from './api.js';
import { $, clearErrorsIn, el, plural, showErrorIn } from './dom.js';
import { setupEditing } from './edit.js';
import { alphaBar, gaussianNoise, qSample, stripTimes } from './forward.js';
import { encodeGif, indexFrames } from './gif.js';
import { canvasBlob, enlarge, loadImage, paint, pixelsOf, saveBlob, stripCanvas } from './images.js';
import { setupInterpolation } from './interpolate.js';
import { setupJobs } from './jobs.js';
import { aliasesOf, classOption } from './labels.js';
import { setupVariations } from './variations.js';

const api = new Api();
const KEY_STORAGE = 'ddpm-api-key';
const SAMPLER_NAMES = { ddpm: 'DDPM (ancestral)', ddim: 'DDIM', dpmpp_2m: 'DPM-Solver++ (2M)' };
const FORWARD_STRIP = 8; // x_t at 8 values of t, from x_0 to x_T

const state = {
  card: null,
  schedule: null,
  controller: null, // AbortController of the running generation
  run: null, // {seed, steps, n, label, sampler, images: [{index, seed, src, pixels}], chains: Map}
};

// ---------- the model card and the form ----------

/** Scale for showing `size`-pixel images at about `target` CSS pixels, by whole pixels. */
function scaleFor(target) {
  return Math.max(1, Math.floor(target / state.card.image_size));
}

function className(label) {
  if (label === null || label === undefined) return null;
  return state.card.class_names?.[label] ?? String(label);
}

async function loadModel() {
  document.body.dataset.state = 'loading';
  try {
    state.card = await api.model();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return askForKey(e);
    showError(e, 'Could not load the model card');
    return;
  }
  const card = state.card;
  $('auth-form').hidden = !card.auth; // stays visible, so the key can be changed
  setupForm(card);
  const parts = [
    `Model ${card.name}: ${card.image_size}×${card.image_size}, ${card.channels} channel${card.channels === 1 ? '' : 's'}`,
    card.num_classes ? `${card.num_classes} classes` : 'unconditional',
    `T = ${card.timesteps} (${card.schedule} schedule)`,
    card.parameters ? `${(card.parameters / 1e6).toFixed(2)} M parameters on ${card.device} (${card.dtype})` : null,
  ];
  $('model-info').textContent = parts.filter(Boolean).join(', ') + '.';
  if (!card.ready) say('The model is still loading: requests get 503 until it is ready.');
  try {
    state.schedule = await api.schedule();
    $('forward-t').max = state.schedule.timesteps;
    $('forward-t').value = Math.round(state.schedule.timesteps / 4);
  } catch (e) {
    showError(e, 'Could not load the noise schedule; the forward process cannot be shown');
  }
  $('generate').disabled = false;
  setupJobs(api, card, formFields);
  setupEditing(api, card);
  setupInterpolation(api, card);
  setupVariations(api, card, state.schedule);
  document.body.dataset.state = 'ready';
}

function askForKey(error) {
  document.body.dataset.state = 'auth';
  $('auth-form').hidden = false;
  showError(error, 'This server needs an API key');
  $('api-key').focus();
}

function setupForm(card) {
  const { defaults, limits } = card;
  Object.assign($('n'), { max: limits.max_images_per_request, value: Math.min(4, limits.max_images_per_request) });
  Object.assign($('steps'), { max: limits.max_steps, value: defaults.steps });
  $('sampler').replaceChildren(...card.samplers.map((s) => el('option', { value: s, selected: s === defaults.sampler },
    SAMPLER_NAMES[s] ?? s)));
  $('eta').value = defaults.eta;
  Object.assign($('guidance'), { max: limits.max_guidance, value: defaults.guidance });
  $('preview-every').max = limits.max_steps;
  $('timeout').max = limits.request_timeout_s;
  $('timeout').placeholder = `${limits.request_timeout_s}`;
  const labels = [el('option', { value: '' }, 'none (unconditional)')];
  if (card.num_classes) {
    for (let i = 0; i < card.num_classes; i++) {
      labels.push(el('option', { value: String(i) }, classOption(i, card.class_names?.[i], aliasesOf(card, i))));
    }
    $('label-hint').textContent = 'class-conditional model; none samples from all classes';
  } else {
    $('label-hint').textContent = 'this model is unconditional';
  }
  $('label').replaceChildren(...labels);
  $('label').disabled = !card.num_classes;
}

/** The request body from the form; empty fields are left out, so the server's defaults apply. */
function formFields() {
  const number = (id) => ($(id).value.trim() === '' ? undefined : Number($(id).value));
  const steps = number('steps') ?? state.card.defaults.steps;
  const preview = number('preview-every');
  const fields = {
    n: number('n'),
    steps: number('steps'),
    sampler: $('sampler').value || undefined,
    eta: number('eta'),
    seed: $('seed').value.trim() || undefined,
    label: $('label').value === '' ? null : Number($('label').value),
    guidance: number('guidance'),
    // About ten frames, whatever the step count: enough for a filmstrip, little for the stream.
    preview_every: preview ?? Math.max(1, Math.ceil(steps / 10)),
    timeout_s: number('timeout'),
  };
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined));
}

// ---------- messages ----------

function say(text) {
  $('status').textContent = text;
}

function clearErrors() {
  clearErrorsIn($('errors'));
}

function showError(error, context = 'The request failed') {
  showErrorIn($('errors'), error, context);
}

function setProgress(step, steps, imagesDone, n) {
  const box = $('progress-box');
  $('progress').max = steps;
  $('progress').value = step;
  const text = `Step ${step} of ${steps}` + (n > 1 ? ` · ${imagesDone} of ${n} images done` : '');
  $('step-text').textContent = text;
  // For tests and for anyone inspecting the page: how many progress events arrived, and the last.
  box.dataset.events = String(Number(box.dataset.events) + 1);
  box.dataset.stepText = text;
}

// ---------- generating ----------

async function generate(fields) {
  clearErrors();
  state.controller?.abort();
  const controller = new AbortController();
  state.controller = controller;
  const run = startRun(fields);
  setBusy(true);
  let finished = false;
  try {
    const stream = await api.generate(fields, { signal: controller.signal });
    run.seed = stream.seed;
    for await (const { event, data } of stream.events) {
      if (event === 'queued') {
        const ahead = data.position === 1 ? '1 image' : `${data.position} images`;
        const text = data.position > 0 ? `Queued behind ${ahead}` : 'Starting at the next step';
        $('step-text').textContent = text;
        say(`${text}.`);
      } else if (event === 'progress') {
        // The first step replaces the queue message: it must not stay on screen while sampling runs.
        if (!run.sampling) {
          run.sampling = true;
          say(`Sampling ${plural(data.n, 'image')}, ${data.steps} steps…`);
        }
        setProgress(data.step, data.steps, data.images_done, data.n);
        for (const preview of data.previews ?? []) addChainFrame(preview.index, `step ${data.step}`, data.step, data.steps, preview.png_base64);
      } else if (event === 'image') {
        await addImage(data);
      } else if (event === 'done') {
        await finish(data);
        finished = true;
      } else if (event === 'error') {
        throw new ApiError(data.status, [data.detail]);
      }
    }
    if (!finished) throw new Error('the stream ended before the images were done');
  } catch (e) {
    if (e.name === 'AbortError') {
      run.stopped = true;
      $('step-text').textContent = 'Stopped';
      say('Stopped; the server frees the rows at its next step.');
    } else {
      if (e instanceof ApiError && e.status === 401) askForKey(e);
      else showError(e);
      $('step-text').textContent = 'Failed';
      say('The request failed; see the message.');
    }
  } finally {
    if (state.controller === controller) {
      state.controller = null;
      setBusy(false);
    }
  }
}

function setBusy(busy) {
  document.body.dataset.run = busy ? 'running' : state.run?.done ? 'done' : state.run?.stopped ? 'stopped' : 'failed';
  $('generate').disabled = busy;
  $('stop').disabled = !busy;
  const more = $('more-steps');
  const run = state.run;
  const nextSteps = run ? Math.min(run.steps * 2, state.card.limits.max_steps) : 0;
  more.disabled = busy || !run?.done || nextSteps <= run.steps;
  more.textContent = run?.done && nextSteps > run.steps ? `Same seed, ${nextSteps} steps` : 'Same seed, more steps';
  more.dataset.steps = String(nextSteps);
}

function startRun(fields) {
  const steps = fields.steps ?? state.card.defaults.steps;
  state.run = { steps, n: fields.n ?? 1, label: fields.label ?? null, sampler: fields.sampler, images: [], chains: new Map(), done: false };
  const run = state.run;
  $('progress-box').dataset.events = '0';
  $('progress-box').dataset.stepText = '';
  $('progress').value = 0;
  $('step-text').textContent = 'Sending…';
  $('results').replaceChildren();
  $('chains').replaceChildren();
  $('results-empty').hidden = false;
  $('forward-view').hidden = true;
  $('forward-empty').hidden = false;
  say('Sending the request…');
  return run;
}

/** Image i's seed as an exact decimal string: seed + i, in BigInt (seeds go past 2^53). */
function seedOf(index, fallback) {
  return state.run.seed ? (BigInt(state.run.seed) + BigInt(index)).toString() : String(fallback);
}

function describe(index, seed) {
  const run = state.run;
  const what = className(run.label) === null ? 'unconditional' : `class ${className(run.label)}`;
  return `image ${index + 1} of ${run.n}, seed ${seed}, ${what}, ${run.steps} ${SAMPLER_NAMES[run.sampler] ?? run.sampler ?? ''} steps`;
}

async function addImage({ index, seed: jsonSeed, png_base64: png }) {
  const seed = seedOf(index, jsonSeed);
  const src = `data:image/png;base64,${png}`;
  const img = await loadImage(src);
  const size = state.card.image_size * scaleFor(128);
  Object.assign(img, { alt: `Generated ${describe(index, seed)}`, className: 'pixelated' });
  Object.assign(img.style, { width: `${size}px`, height: `${size}px` });
  const image = { index, seed, src, pixels: pixelsOf(img) };
  state.run.images.push(image);
  state.run.images.sort((a, b) => a.index - b.index);

  // The seed (up to 19 digits) is in the caption, which wraps, and in the button's accessible
  // name (which starts with its visible text); the buttons stay short, so a
  // long seed never widens the cell and every cell of the grid has the same width.
  const reuse = el('button', { type: 'button', 'aria-label': `Reuse seed ${seed}` }, 'Reuse seed');
  reuse.addEventListener('click', () => {
    $('seed').value = seed;
    $('seed').focus();
    say(`Seed set to ${seed}.`);
  });
  const noise = el('button', { type: 'button' }, 'Noise it (forward process)');
  noise.addEventListener('click', () => {
    $('forward-source').value = String(index);
    renderForward();
    $('forward-t').focus();
  });
  const download = el('a', { href: src, download: `ddpm-seed-${seed}.png`, className: 'button' }, 'Download PNG');
  const item = el('li', { className: 'result', dataset: { index: String(index), seed } },
    el('figure', {}, img, el('figcaption', {}, `#${index + 1} · seed `, el('span', { className: 'seed' }, seed))),
    el('div', { className: 'actions' }, download, reuse, noise));
  item.style.setProperty('--image', `${size}px`);
  const after = [...$('results').children].find((li) => Number(li.dataset.index) > index);
  $('results').insertBefore(item, after ?? null);
  $('results-empty').hidden = true;
  addChainFrame(index, 'final', state.run.steps, state.run.steps, png, true);
  say(`Image ${state.run.images.length} of ${state.run.n} done.`);
  updateForwardSources();
}

async function finish(body) {
  // Every image normally came in its own event already; a missed one comes from the final body.
  for (const image of body.images) {
    if (!state.run.images.some((i) => i.index === image.index)) await addImage(image);
  }
  state.run.done = true;
  state.run.steps = body.steps;
  state.run.sampler = body.sampler;
  $('seed').placeholder = `random (last: ${state.run.seed ?? body.images[0].seed})`;
  const t = body.timings;
  $('progress').value = $('progress').max;
  $('step-text').textContent = `Done: ${body.images.length} image${body.images.length === 1 ? '' : 's'}, ${body.steps} steps`;
  say(`Done: ${body.images.length} image${body.images.length === 1 ? '' : 's'} in ${t.total_s.toFixed(2)} s ` +
      `(queued ${t.queue_s.toFixed(2)} s, sampling ${t.sampling_s.toFixed(2)} s).`);
}

// ---------- the denoising chain (x0 predictions) ----------

function chainFor(index) {
  let chain = state.run.chains.get(index);
  if (chain) return chain;
  const strip = el('ol', { className: 'filmstrip' });
  const gif = el('button', { type: 'button', disabled: true }, 'Save as GIF');
  const png = el('button', { type: 'button', disabled: true }, 'Save as PNG strip');
  const caption = el('figcaption', {}, `Image ${index + 1}: predicted x̂₀ as sampling goes on`);
  const figure = el('figure', { className: 'chain', dataset: { index: String(index) } }, caption, strip,
    el('div', { className: 'actions' }, gif, png));
  chain = { frames: [], strip, gif, png, figure };
  state.run.chains.set(index, chain);
  gif.addEventListener('click', () => saveChainGif(index).catch((e) => showError(e, 'Could not save the GIF')));
  png.addEventListener('click', () => saveChainStrip(index).catch((e) => showError(e, 'Could not save the strip')));
  const after = [...$('chains').children].find((f) => Number(f.dataset.index) > index);
  $('chains').insertBefore(figure, after ?? null);
  return chain;
}

function addChainFrame(index, label, step, steps, png, final = false) {
  const chain = chainFor(index);
  const src = `data:image/png;base64,${png}`;
  const size = state.card.image_size * scaleFor(64);
  const alt = final ? `Image ${index + 1}, the final sample` : `Image ${index + 1}, predicted x0 at step ${step} of ${steps}`;
  const img = el('img', { src, alt, className: 'pixelated' });
  Object.assign(img.style, { width: `${size}px`, height: `${size}px` });
  chain.frames.push({ src, label, final });
  chain.strip.append(el('li', { className: final ? 'final' : '' }, img, el('span', {}, label)));
  chain.gif.disabled = chain.png.disabled = false;
  chain.figure.dataset.frames = String(chain.frames.length);
}

async function chainPixels(index) {
  const chain = state.run.chains.get(index);
  const images = await Promise.all(chain.frames.map((f) => loadImage(f.src)));
  return { chain, frames: images.map(pixelsOf) };
}

function chainName(index, ext) {
  const image = state.run.images.find((i) => i.index === index);
  return `ddpm-chain-seed-${image?.seed ?? seedOf(index, index)}.${ext}`;
}

async function saveChainGif(index) {
  const { chain, frames } = await chainPixels(index);
  const scale = scaleFor(128);
  const big = frames.map((f) => enlarge(f, scale).data);
  const { palette, frames: indexed } = indexFrames(big);
  // 0.2 s a frame, and the finished sample held for 2 s before the loop starts again.
  const delays = chain.frames.map((f) => (f.final ? 200 : 20));
  const bytes = encodeGif({ width: frames[0].width * scale, height: frames[0].height * scale, palette, frames: indexed, delays });
  saveBlob(new Blob([bytes], { type: 'image/gif' }), chainName(index, 'gif'));
  say(`Saved the chain of image ${index + 1} as a GIF of ${frames.length} frames.`);
}

async function saveChainStrip(index) {
  const { frames } = await chainPixels(index);
  saveBlob(await canvasBlob(stripCanvas(frames, scaleFor(64))), chainName(index, 'png'));
  say(`Saved the chain of image ${index + 1} as a PNG strip of ${frames.length} frames.`);
}

// ---------- the forward process ----------

function updateForwardSources() {
  const select = $('forward-source');
  const chosen = select.value;
  select.replaceChildren(...state.run.images.map((i) => el('option', { value: String(i.index) }, `#${i.index + 1} · seed ${i.seed}`)));
  select.value = state.run.images.some((i) => String(i.index) === chosen) ? chosen : String(state.run.images[0].index);
  $('forward-empty').hidden = true;
  $('forward-view').hidden = !state.schedule;
  renderForward();
}

function renderForward() {
  const image = state.run?.images.find((i) => String(i.index) === $('forward-source').value);
  if (!image || !state.schedule) return;
  const abar = state.schedule.alphas_cumprod;
  const T = state.schedule.timesteps;
  const channels = state.card.channels === 1 ? 1 : 3;
  const { width, height } = image.pixels;
  const seed = Number($('noise-seed').value) >>> 0;
  const noise = gaussianNoise(seed, width * height * channels);
  const t = Number($('forward-t').value);
  const a = alphaBar(abar, t);
  const canvas = $('forward-canvas');
  paint(canvas, qSample(image.pixels, a, noise, channels));
  const size = width * scaleFor(128);
  Object.assign(canvas.style, { width: `${size}px`, height: `${(size * height) / width}px` });
  const detail = `t = ${t} of ${T}, ᾱ_t = ${a.toFixed(4)}: ${(100 * Math.sqrt(a)).toFixed(1)}% signal, noise σ = ${Math.sqrt(1 - a).toFixed(3)}`;
  $('forward-t-out').textContent = `t = ${t}`;
  $('forward-caption').textContent = `x_t of image #${image.index + 1} at ${detail} (noise seed ${seed}).`;
  canvas.setAttribute('aria-label', `Image ${image.index + 1} noised to ${detail}`);
  $('forward-t').setAttribute('aria-valuetext', `t = ${t}, alpha-bar ${a.toFixed(3)}`);

  const times = stripTimes(T, FORWARD_STRIP);
  const stripSize = width * scaleFor(64);
  $('forward-strip').replaceChildren(...times.map((ts) => {
    const c = el('canvas', { className: 'pixelated', role: 'img', 'aria-label': `x_t at t = ${ts}, alpha-bar ${alphaBar(abar, ts).toFixed(3)}` });
    paint(c, qSample(image.pixels, alphaBar(abar, ts), noise, channels));
    Object.assign(c.style, { width: `${stripSize}px`, height: `${(stripSize * height) / width}px` });
    return el('div', { className: 'frame' }, c, el('span', {}, `t=${ts}`));
  }));
  $('forward-strip-caption').textContent = `q(x_t | x_0) at t = ${times.join(', ')}: the signal fades as ᾱ_t falls to ${abar[T - 1].toExponential(1)}.`;
  $('forward-view').dataset.t = String(t);
  $('forward-view').dataset.source = String(image.index);
}

async function saveForwardStrip() {
  const frames = [...$('forward-strip').querySelectorAll('canvas')].map((c) => c.getContext('2d').getImageData(0, 0, c.width, c.height));
  const image = state.run.images.find((i) => String(i.index) === $('forward-source').value);
  saveBlob(await canvasBlob(stripCanvas(frames, scaleFor(64))), `ddpm-forward-seed-${image.seed}.png`);
}

// ---------- wiring ----------

$('generate-form').addEventListener('submit', (event) => {
  event.preventDefault();
  if (state.card) generate(formFields());
});
$('stop').addEventListener('click', () => state.controller?.abort());
$('more-steps').addEventListener('click', () => {
  const run = state.run;
  $('seed').value = run.seed;
  $('steps').value = $('more-steps').dataset.steps;
  $('n').value = run.n;
  generate(formFields());
});
$('auth-form').addEventListener('submit', (event) => {
  event.preventDefault();
  api.key = $('api-key').value.trim();
  sessionStorage.setItem(KEY_STORAGE, api.key);
  clearErrors();
  loadModel();
});
for (const id of ['forward-source', 'forward-t', 'noise-seed']) $(id).addEventListener('input', renderForward);
$('save-forward').addEventListener('click', () => saveForwardStrip().catch((e) => showError(e, 'Could not save the strip')));

api.key = sessionStorage.getItem(KEY_STORAGE) ?? '';
$('api-key').value = api.key;
loadModel();
