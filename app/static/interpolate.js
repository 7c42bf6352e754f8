// The interpolation strip (Ho et al. 2020, sec. 4.3, fig. 8): two ends, each an image or a seed
// (that seed's sample, drawn first), encoded by q(x_t | x_0) with one shared noise, mixed
// linearly in lambda and decoded by the reverse process: POST /v1/interpolations/stream.

import { bigJson } from './api.js';
import { $, copyOptions, defined, el, numberOf, pixelImage } from './dom.js';
import { base64, encodePng, modelPixels } from './png.js';
import { Panel } from './run.js';
import { modelSized, SourcePicker } from './sources.js';

const state = { api: null, card: null, panel: null, ends: {} };
const SEED_OPTION = { value: 'seed', label: 'a seed (its sample)' };

export function setupInterpolation(api, card) {
  Object.assign(state, { api, card });
  copyOptions($('label'), $('interp-label'));
  copyOptions($('sampler'), $('interp-sampler'));
  Object.assign($('interp-steps'), { max: card.limits.max_steps, value: $('steps').value });
  Object.assign($('interp-t'), { max: card.timesteps, value: Math.round(card.timesteps / 2) });
  showT();
  $('interp-run').disabled = false;
  if (state.panel) return;
  state.panel = new Panel('interp');
  for (const end of ['a', 'b']) {
    const picker = new SourcePicker($(`interp-${end}`), $(`interp-${end}-file`), {
      extra: [SEED_OPTION], onChange: () => showEnd(end) });
    state.ends[end] = picker;
    showEnd(end);
  }
  $('interp-t').addEventListener('input', showT);
  $('interp-form').addEventListener('submit', (event) => {
    event.preventDefault();
    state.panel.run((signal) => interpolate(signal), 'The interpolation failed');
  });
}

function showEnd(end) {
  $(`interp-${end}-seed`).disabled = state.ends[end].source() !== null;
}

function showT() {
  const t = Number($('interp-t').value);
  $('interp-t-out').textContent = t === 0 ? 't = 0: the exact blend of the images' : `t = ${t} of ${state.card.timesteps}`;
}

/** One end of the request: {image} from the picker, or {seed} typed (exact, as a BigInt). */
async function endOf(end) {
  const src = state.ends[end].source();
  if (src === null) {
    const seed = $(`interp-${end}-seed`).value.trim();
    if (!/^\d+$/.test(seed)) throw new Error(`end ${end.toUpperCase()}: type a seed (digits) or choose an image`);
    return { seed: BigInt(seed) };
  }
  const channels = state.card.channels === 1 ? 1 : 3;
  const { pixels } = await modelSized(src, state.card.image_size);
  return { image: base64(await encodePng(pixels.width, pixels.height, channels, modelPixels(pixels, channels))) };
}

async function interpolate(signal) {
  const seed = $('interp-seed').value.trim();
  const fields = defined({
    a: await endOf('a'),
    b: await endOf('b'),
    t: Number($('interp-t').value),
    frames: numberOf($('interp-frames')),
    label: $('interp-label').value === '' ? null : Number($('interp-label').value),
    steps: numberOf($('interp-steps')),
    sampler: $('interp-sampler').value || undefined,
    seed: seed === '' ? undefined : seed,
  });
  const frames = fields.frames ?? 11;
  const size = state.card.image_size * Math.max(1, Math.floor(64 / state.card.image_size));
  const strip = $('interp-strip');
  // Every frame has its place from the start (lambda evenly from 0 to 1), filled as it finishes.
  strip.replaceChildren(...Array.from({ length: frames }, (_, i) =>
    el('li', { dataset: { index: String(i) } }, el('span', {}, `λ=${(i / (frames - 1)).toFixed(2)}`))));
  strip.dataset.t = String(fields.t);
  state.panel.say(`Interpolating ${frames} frames at t = ${fields.t}…`);
  const addFrame = ({ index, png_base64: png }) => {
    const item = strip.children[index];
    if (!item || item.querySelector('img')) return;
    const lambda = (index / (frames - 1)).toFixed(2);
    item.prepend(pixelImage(`data:image/png;base64,${png}`, `Frame ${index + 1} of ${frames}, lambda ${lambda}`, size));
  };
  const stream = await state.api.stream('v1/interpolations/stream', bigJson(fields), { signal });
  const done = await state.panel.read(stream, addFrame);
  done.images.forEach(addFrame);
  strip.dataset.frames = String(strip.querySelectorAll('img').length);
  $('interp-caption').textContent = `a → b at t = ${fields.t} of ${state.card.timesteps}, encoder noise seed ` +
    `${stream.seed ?? done.images[0].seed}; λ from 0 (a) to 1 (b).`;
  state.panel.say(`Done: ${frames} frames.`);
}
