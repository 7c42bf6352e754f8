// Where an editing panel's input images come from: an image generated on this page (the main
// results, a job's, an edit's) or a file from the computer, brought to the model's size.

import { el } from './dom.js';
import { loadImage, pixelsOf } from './images.js';

// Every list of finished images on the page; a picker offers what they hold.
const GALLERIES = ['results', 'job-results', 'edit-results'];

/** The page's images now, as [{label, src}], from each gallery's <figure>s. */
export function pageImages() {
  const found = [];
  for (const id of GALLERIES) {
    for (const figure of document.querySelectorAll(`#${id} figure`)) {
      const img = figure.querySelector('img');
      const caption = figure.querySelector('figcaption')?.textContent.trim() ?? img.alt;
      if (img?.src.startsWith('data:image/png')) found.push({ label: `${galleryName(id)} ${caption}`, src: img.src });
    }
  }
  return found;
}

function galleryName(id) {
  return { results: 'Generated', 'job-results': 'Job', 'edit-results': 'Edit' }[id];
}

/**
 * An image as the model's RGBA pixels: at `size` x `size`, smoothly scaled when it is another
 * size. Returns {pixels: ImageData, from: 'WxH' or null when no scaling was needed}.
 */
export async function modelSized(src, size) {
  const img = await loadImage(src);
  if (img.naturalWidth === size && img.naturalHeight === size) return { pixels: pixelsOf(img), from: null };
  const canvas = el('canvas', { width: size, height: size });
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.imageSmoothingQuality = 'high';
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, size, size); // transparent pixels become black, as the model has no alpha
  ctx.drawImage(img, 0, 0, size, size);
  return { pixels: ctx.getImageData(0, 0, size, size), from: `${img.naturalWidth}×${img.naturalHeight}` };
}

/**
 * A <select> of sources, refreshed whenever a gallery changes, plus a file input whose file
 * becomes an option. `extra` options (e.g. "a seed") come first.
 */
export class SourcePicker {
  constructor(select, file, { extra = [], onChange = () => {} } = {}) {
    Object.assign(this, { select, file, extra, onChange, uploads: [] });
    const observer = new MutationObserver(() => this.refresh());
    for (const id of GALLERIES) {
      const gallery = document.getElementById(id);
      if (gallery) observer.observe(gallery, { childList: true, subtree: true });
    }
    select.addEventListener('change', () => {
      this.shown = select.value;
      onChange(select.value);
    });
    file.addEventListener('change', () => this.upload());
    this.refresh();
  }

  async upload() {
    const chosen = this.file.files[0];
    if (!chosen) return;
    const src = await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(chosen);
    });
    this.uploads.push({ label: `File ${chosen.name}`, src });
    this.refresh(`upload:${this.uploads.length - 1}`);
  }

  refresh(choose = this.select.value) {
    this.images = pageImages();
    const options = [
      ...this.extra.map(({ value, label }) => el('option', { value }, label)),
      ...this.uploads.map((u, i) => el('option', { value: `upload:${i}` }, u.label)),
      // A page image's value is its data: URL: the option keeps naming the same image when a
      // gallery is redrawn, and a vanished one is no longer offered.
      ...this.images.map((p) => el('option', { value: p.src }, p.label)),
    ];
    if (!options.length) options.push(el('option', { value: '' }, 'no image yet: generate one or choose a file'));
    this.select.replaceChildren(...options);
    if ([...this.select.options].some((o) => o.value === choose)) this.select.value = choose;
    const before = this.shown;
    this.shown = this.select.value;
    if (before !== undefined && before !== this.shown) this.onChange(this.shown);
  }

  /** The chosen image's data: URL, or null when an `extra` option (or nothing) is chosen. */
  source() {
    const value = this.select.value;
    if (value.startsWith('data:')) return value;
    return value.startsWith('upload:') ? this.uploads[Number(value.slice(7))].src : null;
  }
}
