// Small DOM helpers shared by the page's panels: element lookup and creation, messages, errors
// and progress bars, each drawn into the panel's own elements.

import { ApiError } from './api.js';

export const $ = (id) => document.getElementById(id);

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

export function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

/** Shows an error in `box` (a role=alert element): the server's messages one per line, with the status. */
export function showErrorIn(box, error, context = 'The request failed') {
  if (error instanceof ApiError) {
    const status = error.status ? ` (HTTP ${error.status})` : '';
    const items = error.messages.map((m) => el('li', {}, m));
    if (error.retryAfter !== null) items.push(el('li', {}, `Retry after ${error.retryAfter} s.`));
    box.replaceChildren(el('p', {}, `${context}${status}:`), el('ul', {}, ...items));
    box.dataset.status = String(error.status);
  } else {
    box.replaceChildren(el('p', {}, `${context}: ${error.message}`));
    box.dataset.status = 'client';
  }
}

export function clearErrorsIn(box) {
  box.replaceChildren();
  delete box.dataset.status;
}

/** Copies a <select>'s options (e.g. the main form's classes and samplers) into another. */
export function copyOptions(from, to, selected = from.value) {
  to.replaceChildren(...[...from.options].map((o) => el('option', { value: o.value, selected: o.value === selected }, o.textContent)));
  to.disabled = from.disabled;
}

/** An <img> of a PNG data: URL, shown `size` CSS pixels wide with square pixels. */
export function pixelImage(src, alt, size) {
  const img = el('img', { src, alt, className: 'pixelated' });
  Object.assign(img.style, { width: `${size}px`, height: `${size}px` });
  return img;
}

/** A number input's value, or undefined when it is empty (the server's default applies). */
export function numberOf(input) {
  return input.value.trim() === '' ? undefined : Number(input.value);
}

/** Leaves out the undefined fields, so that the server's defaults apply. */
export function defined(fields) {
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined));
}
