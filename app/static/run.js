// One request of an editing panel (edit, interpolation, variations) over its progress stream:
// the same events as /generate/stream, drawn into the panel's own progress bar, status and
// error box; one run at a time per panel, stoppable.

import { ApiError } from './api.js';
import { $, clearErrorsIn, plural, showErrorIn } from './dom.js';

/**
 * A panel's run state, on elements named `${prefix}-progress`, `-step-text`, `-status`,
 * `-errors`, `-run` and `-stop`; the panel element `prefix` carries data-state (idle, running,
 * done, failed, stopped) and data-events (progress events seen), for people and tests alike.
 */
export class Panel {
  constructor(prefix) {
    this.root = $(prefix);
    const part = (name) => $(`${prefix}-${name}`);
    this.progress = part('progress');
    this.stepText = part('step-text');
    this.status = part('status');
    this.errors = part('errors');
    this.runButton = part('run');
    this.stopButton = part('stop');
    this.controller = null;
    this.stopButton.addEventListener('click', () => this.controller?.abort());
  }

  say(text) {
    this.status.textContent = text;
  }

  progressed({ step, steps, images_done: done, n }) {
    this.progress.max = steps;
    this.progress.value = step;
    this.stepText.textContent = `Step ${step} of ${steps}` + (n > 1 ? ` · ${done} of ${n} images done` : '');
    this.root.dataset.events = String(Number(this.root.dataset.events ?? 0) + 1);
  }

  /**
   * Reads a stream of /generate/stream's events to its `done` body, showing its queue position
   * and progress; `image` events go to `onImage` as they come. Rejects with ApiError for an
   * `error` event.
   */
  async read(stream, onImage) {
    for await (const { event, data } of stream.events) {
      if (event === 'queued') this.queued(data.position);
      else if (event === 'progress') this.progressed(data);
      else if (event === 'image') await onImage?.(data);
      else if (event === 'done') return data;
      else if (event === 'error') throw new ApiError(data.status, [data.detail]);
    }
    throw new Error('the stream ended before the images were done');
  }

  queued(position) {
    this.stepText.textContent = position > 0 ? `Queued behind ${plural(position, 'image')}` : 'Starting at the next step';
  }

  /** Runs `task(signal)` (which draws its own results), with the bar, the buttons and the errors around it. */
  async run(task, context) {
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    clearErrorsIn(this.errors);
    Object.assign(this.root.dataset, { state: 'running', events: '0' });
    this.progress.value = 0;
    this.stepText.textContent = 'Sending…';
    this.runButton.disabled = true;
    this.stopButton.disabled = false;
    let state = 'failed';
    try {
      await task(controller.signal);
      state = 'done';
    } catch (e) {
      if (e.name === 'AbortError') {
        state = 'stopped';
        this.say('Stopped; the server frees the rows at its next step.');
      } else {
        showErrorIn(this.errors, e, context);
        this.say('The request failed; see the message.');
      }
    } finally {
      if (this.controller === controller) {
        this.controller = null;
        this.root.dataset.state = state;
        this.stepText.textContent = { done: 'Done', stopped: 'Stopped', failed: 'Failed' }[state];
        if (state === 'done') this.progress.value = this.progress.max;
        this.runButton.disabled = false;
        this.stopButton.disabled = true;
      }
    }
  }
}
