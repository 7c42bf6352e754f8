// Variations from a shared x_t (Ho et al. 2020, fig. 7): one seeded chain run down to t, then n
// continuations from that x_t with their own seeds: POST /v1/variations/stream. Each run adds a
// row for its t, rows kept in order of t, so that moving the slider shows the shared attributes
// loosening as t grows (at t = 0 every continuation is the same sample, at t = T none is shared).

import { $, copyOptions, defined, el, numberOf, pixelImage } from './dom.js';
import { requestJson } from './api.js';
import { alphaBar } from './forward.js';
import { Panel } from './run.js';

const state = { api: null, card: null, schedule: null, panel: null };
const MAX_ROWS = 8;

export function setupVariations(api, card, schedule) {
  Object.assign(state, { api, card, schedule });
  copyOptions($('label'), $('var-label'));
  // Variations need a sampler that draws noise: DDPM by default (DDIM only with eta > 0).
  copyOptions($('sampler'), $('var-sampler'), 'ddpm');
  Object.assign($('var-steps'), { max: card.limits.max_steps, value: $('steps').value });
  Object.assign($('var-n'), { max: card.limits.max_images_per_request });
  Object.assign($('var-t'), { max: card.timesteps, value: Math.round(card.timesteps / 4) });
  showT();
  $('var-run').disabled = false;
  if (state.panel) return;
  state.panel = new Panel('var');
  $('var-t').addEventListener('input', showT);
  // Letting go of the slider (or a key press on it) runs the new t: the rows compare t's.
  $('var-t').addEventListener('change', () => $('var-form').requestSubmit());
  $('var-form').addEventListener('submit', (event) => {
    event.preventDefault();
    state.panel.run((signal) => vary(signal), 'The variations failed');
  });
}

function showT() {
  const t = Number($('var-t').value);
  const signal = state.schedule ? Math.sqrt(alphaBar(state.schedule.alphas_cumprod, t)) : null;
  const share = signal === null ? '' : `, √ᾱ_t = ${signal.toFixed(3)} (the share of x₀ left in x_t)`;
  $('var-t-out').textContent = `t = ${t} of ${state.card.timesteps}${share}`;
}

/** A seed for the runs to share: the one typed, else one drawn here and written into the field. */
function sharedSeed() {
  const typed = $('var-seed').value.trim();
  if (typed !== '') return typed;
  const drawn = String(crypto.getRandomValues(new Uint32Array(1))[0]);
  $('var-seed').value = drawn;
  return drawn;
}

async function vary(signal) {
  const fields = defined({
    t: Number($('var-t').value),
    seed: sharedSeed(),
    n: numberOf($('var-n')),
    label: $('var-label').value === '' ? null : Number($('var-label').value),
    steps: numberOf($('var-steps')),
    sampler: $('var-sampler').value || undefined,
  });
  const n = fields.n ?? 4;
  const key = JSON.stringify({ ...fields, t: undefined });
  const size = state.card.image_size * Math.max(1, Math.floor(64 / state.card.image_size));
  const strip = el('ol', { className: 'filmstrip' });
  const row = el('figure', { className: 'variation', dataset: { t: String(fields.t), key, seed: fields.seed } },
    el('figcaption', {}, `t = ${fields.t}: x_t of seed ${fields.seed}, shared by ${n} continuations`), strip);
  placeRow(row);
  state.panel.say(`Running seed ${fields.seed} to t = ${fields.t}, then ${n} continuations…`);
  const addImage = ({ index, seed, png_base64: png }) => {
    if (strip.querySelector(`[data-index="${index}"]`)) return;
    const item = el('li', { dataset: { index: String(index) } },
      pixelImage(`data:image/png;base64,${png}`, `Continuation ${index + 1} from x_${fields.t} of seed ${fields.seed}`, size),
      el('span', {}, `#${index + 1}`));
    const after = [...strip.children].find((li) => Number(li.dataset.index) > index);
    strip.insertBefore(item, after ?? null);
  };
  const stream = await state.api.stream('v1/variations/stream', requestJson(fields), { signal });
  const done = await state.panel.read(stream, addImage);
  done.images.forEach(addImage);
  row.dataset.done = 'true';
  state.panel.say(`Done: t = ${fields.t}. Move the slider and compare the rows.`);
}

/** The row in order of t; a row of other settings (seed, n, class...) starts the table afresh. */
function placeRow(row) {
  const rows = $('var-rows');
  for (const old of [...rows.children]) {
    if (old.dataset.key !== row.dataset.key || old.dataset.t === row.dataset.t || old.dataset.done !== 'true') old.remove();
  }
  const after = [...rows.children].find((r) => Number(r.dataset.t) > Number(row.dataset.t));
  rows.insertBefore(row, after ?? null);
  // Over the limit, the row farthest in t from the new one goes.
  while (rows.children.length > MAX_ROWS) {
    const t = Number(row.dataset.t);
    [...rows.children].reduce((far, r) => (Math.abs(Number(r.dataset.t) - t) > Math.abs(Number(far.dataset.t) - t) ? r : far)).remove();
  }
}
