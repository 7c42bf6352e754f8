// The inpainting mask, painted with a pointer (mouse, pen or touch) on a canvas that shows the
// source image: white = regenerate, as POST /v1/edits reads it. One mask pixel per model pixel;
// the canvas is enlarged by CSS, pixelated, and pointer positions are mapped back.

/** Integer points from (x0, y0) to (x1, y1), so a fast stroke leaves no gaps (Bresenham). */
function line(x0, y0, x1, y1) {
  const points = [];
  const dx = Math.abs(x1 - x0), dy = -Math.abs(y1 - y0);
  const sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  let err = dx + dy;
  for (;;) {
    points.push([x0, y0]);
    if (x0 === x1 && y0 === y1) return points;
    const e2 = 2 * err;
    if (e2 >= dy) { err += dy; x0 += sx; }
    if (e2 <= dx) { err += dx; y0 += sy; }
  }
}

export class MaskPainter {
  /** @param {HTMLCanvasElement} canvas  shown enlarged; its own size is set by `setImage` */
  constructor(canvas, { onChange = () => {} } = {}) {
    Object.assign(this, { canvas, onChange, image: null, mask: new Uint8Array(0), brush: 1, erase: false, last: null });
    canvas.addEventListener('pointerdown', (e) => this.down(e));
    canvas.addEventListener('pointermove', (e) => this.move(e));
    for (const type of ['pointerup', 'pointercancel']) canvas.addEventListener(type, () => { this.last = null; });
    canvas.addEventListener('contextmenu', (e) => e.preventDefault()); // the right button erases
  }

  /** A new source (ImageData at the model's size); the mask is kept when the size is the same. */
  setImage(image) {
    if (!this.image || image.width !== this.image.width || image.height !== this.image.height) {
      this.mask = new Uint8Array(image.width * image.height);
    }
    this.image = image;
    this.canvas.width = image.width;
    this.canvas.height = image.height;
    this.draw();
  }

  cellOf(event) {
    const rect = this.canvas.getBoundingClientRect();
    const x = Math.floor(((event.clientX - rect.left) / rect.width) * this.image.width);
    const y = Math.floor(((event.clientY - rect.top) / rect.height) * this.image.height);
    return [Math.min(Math.max(x, 0), this.image.width - 1), Math.min(Math.max(y, 0), this.image.height - 1)];
  }

  down(event) {
    if (!this.image) return;
    event.preventDefault();
    try {
      this.canvas.setPointerCapture(event.pointerId); // the stroke goes on when the pointer leaves the canvas
    } catch {
      // a synthetic event's pointer cannot be captured; the stroke still works inside the canvas
    }
    this.last = this.cellOf(event);
    this.stroke([this.last], event);
  }

  move(event) {
    if (!this.last || !this.image || event.buttons === 0) return;
    const cell = this.cellOf(event);
    this.stroke(line(...this.last, ...cell), event);
    this.last = cell;
  }

  stroke(points, event) {
    const value = this.erase || event.button === 2 || event.buttons === 2 ? 0 : 1;
    const { width, height } = this.image;
    const r = this.brush - 1; // brush 1: one pixel; 2: a 3x3 square; ...
    for (const [cx, cy] of points) {
      for (let y = Math.max(0, cy - r); y <= Math.min(height - 1, cy + r); y++) {
        for (let x = Math.max(0, cx - r); x <= Math.min(width - 1, cx + r); x++) this.mask[y * width + x] = value;
      }
    }
    this.changed();
  }

  /** Sets every pixel for which `pick(x, y)` is true (or all, with no argument); false pixels are kept. */
  fill(value, pick = () => true) {
    const { width } = this.image;
    this.mask.forEach((_, i) => { if (pick(i % width, Math.floor(i / width))) this.mask[i] = value; });
    this.changed();
  }

  invert() {
    this.mask.forEach((v, i) => { this.mask[i] = 1 - v; });
    this.changed();
  }

  changed() {
    this.draw();
    this.onChange(this.count());
  }

  count() {
    return this.mask.reduce((n, v) => n + v, 0);
  }

  /** The source with the masked pixels tinted, so both stay visible. */
  draw() {
    if (!this.image) return;
    const out = new ImageData(new Uint8ClampedArray(this.image.data), this.image.width, this.image.height);
    this.mask.forEach((v, p) => {
      if (!v) return;
      const d = out.data;
      d[4 * p] = Math.round(0.35 * d[4 * p] + 0.65 * 255);
      d[4 * p + 1] = Math.round(0.35 * d[4 * p + 1] + 0.65 * 64);
      d[4 * p + 2] = Math.round(0.35 * d[4 * p + 2] + 0.65 * 160);
    });
    this.canvas.getContext('2d').putImageData(out, 0, 0);
  }

  /** The mask as grey pixels: 255 = regenerate, 0 = keep. */
  pixels() {
    return this.mask.map((v) => (v ? 255 : 0));
  }
}
