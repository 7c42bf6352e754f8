// The edit panel: an image (generated here or uploaded), a mask painted on it, and POST
// /v1/edits/stream. Without a mask the server runs SDEdit (noise to t = strength x T with
// q(x_t | x_0), eq. 4, and denoise, under any class); with one, RePaint (the unmasked pixels
// are put back, noised to each step, after every step, so they come back exactly).

import { bigJson } from './api.js';
import { $, copyOptions, defined, el, numberOf, pixelImage, plural } from './dom.js';
import { MaskPainter } from './mask.js';
import { base64, encodePng, modelPixels } from './png.js';
import { Panel } from './run.js';
import { modelSized, SourcePicker } from './sources.js';

const panel = () => state.panel;
const state = { api: null, card: null, panel: null, painter: null, picker: null, from: null };

/** Called once the model card is loaded: the panel takes its bounds and choices from it. */
export function setupEditing(api, card) {
  Object.assign(state, { api, card });
  copyOptions($('label'), $('edit-label'));
  copyOptions($('sampler'), $('edit-sampler'));
  Object.assign($('edit-steps'), { max: card.limits.max_steps, value: $('steps').value });
  Object.assign($('edit-n'), { max: card.limits.max_images_per_request });
  const size = card.image_size * Math.max(1, Math.floor(256 / card.image_size));
  Object.assign($('edit-canvas').style, { width: `${size}px`, height: `${size}px` });
  if (state.panel) return; // a second card (a new key): the wiring is already there
  state.panel = new Panel('edit');
  state.painter = new MaskPainter($('edit-canvas'), { onChange: describeMask });
  state.picker = new SourcePicker($('edit-source'), $('edit-file'), { onChange: () => showSource() });
  $('edit-brush').addEventListener('change', () => { state.painter.brush = Number($('edit-brush').value); });
  $('edit-erase').addEventListener('change', () => { state.painter.erase = $('edit-erase').checked; });
  $('mask-clear').addEventListener('click', () => state.painter.fill(0));
  $('mask-all').addEventListener('click', () => state.painter.fill(1));
  $('mask-top').addEventListener('click', () => state.painter.fill(1, (_, y) => y < card.image_size / 2));
  $('mask-invert').addEventListener('click', () => state.painter.invert());
  $('edit-form').addEventListener('submit', (event) => {
    event.preventDefault();
    panel().run((signal) => edit(signal), 'The edit failed');
  });
  showSource();
}

async function showSource() {
  const src = state.picker.source();
  $('edit-view').hidden = !src;
  $('edit-run').disabled = !src;
  if (!src) return;
  const { pixels, from } = await modelSized(src, state.card.image_size);
  state.from = from;
  state.painter.setImage(pixels);
  describeMask(state.painter.count());
}

function describeMask(count) {
  const size = state.card.image_size;
  const scaled = state.from ? ` The image was scaled from ${state.from} to ${size}×${size}.` : '';
  $('edit-mask-text').textContent = (count === 0
    ? 'No mask: SDEdit redraws the whole image (strength sets how much).'
    : `${plural(count, 'pixel')} of ${size * size} masked: RePaint regenerates them and keeps the rest exactly.`) + scaled;
  $('edit-canvas').dataset.masked = String(count);
}

async function pngOf(pixels, channels) {
  const { width, height } = state.painter.image;
  return base64(await encodePng(width, height, channels, pixels));
}

/** The request body: the image and mask as the model's own pixels, exact (no canvas re-encoding). */
async function body() {
  const channels = state.card.channels === 1 ? 1 : 3;
  const masked = state.painter.count() > 0;
  const seed = $('edit-seed').value.trim();
  return defined({
    image: await pngOf(modelPixels(state.painter.image, channels), channels),
    mask: masked ? await pngOf(state.painter.pixels(), 1) : undefined,
    strength: numberOf($('edit-strength')),
    label: $('edit-label').value === '' ? null : Number($('edit-label').value),
    steps: numberOf($('edit-steps')),
    sampler: $('edit-sampler').value || undefined,
    n: numberOf($('edit-n')),
    jumps: masked ? numberOf($('edit-jumps')) : undefined,
    seed: seed === '' ? undefined : seed,
  });
}

async function edit(signal) {
  const fields = await body();
  const scale = (target) => state.card.image_size * Math.max(1, Math.floor(target / state.card.image_size));
  const size = scale(96);
  const big = scale(128); // as the main results are shown
  const inputs = [el('figure', {}, pixelImage(`data:image/png;base64,${fields.image}`, 'The image sent', size),
    el('figcaption', {}, 'input'))];
  if (fields.mask) {
    inputs.push(el('figure', {}, pixelImage(`data:image/png;base64,${fields.mask}`, 'The mask sent: white is regenerated', size),
      el('figcaption', {}, 'mask')));
  }
  $('edit-inputs').replaceChildren(...inputs);
  $('edit-results').replaceChildren();
  panel().say(fields.mask ? 'Inpainting (RePaint)…' : 'Editing (SDEdit)…');
  const stream = await state.api.stream('v1/edits/stream', bigJson(fields), { signal });
  const first = stream.seed ? BigInt(stream.seed) : null;
  const addImage = ({ index, seed, png_base64: png }) => {
    if ($('edit-results').querySelector(`[data-index="${index}"]`)) return;
    const exact = first === null ? String(seed) : String(first + BigInt(index));
    const what = fields.mask ? 'inpainted' : 'edited';
    const src = `data:image/png;base64,${png}`;
    const item = el('li', { className: 'result', dataset: { index: String(index), seed: exact } },
      el('figure', {}, pixelImage(src, `Image ${what}, seed ${exact}`, big),
        el('figcaption', {}, `#${index + 1} · seed ${exact}`)),
      el('div', { className: 'actions' }, el('a', { href: src, download: `ddpm-edit-seed-${exact}.png`, className: 'button' }, 'Download PNG')));
    item.style.setProperty('--image', `${big}px`);
    const after = [...$('edit-results').children].find((li) => Number(li.dataset.index) > index);
    $('edit-results').insertBefore(item, after ?? null);
  };
  const done = await panel().read(stream, addImage);
  done.images.forEach(addImage);
  panel().say(`Done: ${plural(done.images.length, 'image')}, ${done.steps} ${done.sampler} steps.`);
}
