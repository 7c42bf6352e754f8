// Pixels in and out of the page: decoding PNGs to ImageData, enlarging without blur, strips,
// and saving files.

/** A decoded <img> for a URL (e.g. a data: URL of a PNG from the stream). */
export async function loadImage(src) {
  const img = new Image();
  img.src = src;
  await img.decode();
  return img;
}

/** The RGBA pixels of a decoded image, at its natural size. */
export function pixelsOf(img) {
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, canvas.width, canvas.height);
}

/** Nearest-neighbour enlargement by an integer factor: the model's pixels stay square and sharp. */
export function enlarge(image, scale) {
  const { width, height, data } = image;
  const out = new ImageData(width * scale, height * scale);
  for (let y = 0; y < out.height; y++) {
    for (let x = 0; x < out.width; x++) {
      const from = 4 * (Math.floor(y / scale) * width + Math.floor(x / scale));
      out.data.set(data.subarray(from, from + 4), 4 * (y * out.width + x));
    }
  }
  return out;
}

/** Draws ImageData into a canvas of its own size (CSS enlarges it, pixelated). */
export function paint(canvas, image) {
  canvas.width = image.width;
  canvas.height = image.height;
  canvas.getContext('2d').putImageData(image, 0, 0);
}

/** Frames side by side, each enlarged `scale` times, `gap` pixels apart on white. */
export function stripCanvas(frames, scale, gap = 2) {
  const { width, height } = frames[0];
  const canvas = document.createElement('canvas');
  canvas.width = frames.length * width * scale + (frames.length - 1) * gap;
  canvas.height = height * scale;
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  frames.forEach((frame, i) => ctx.putImageData(enlarge(frame, scale), i * (width * scale + gap), 0));
  return canvas;
}

/** Offers `blob` as a download named `filename`. */
export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  // The download has started by the time the click returns; the URL may go a little later.
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** A canvas as a PNG Blob. */
export function canvasBlob(canvas) {
  return new Promise((resolve, reject) =>
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error('the canvas could not be encoded'))), 'image/png'),
  );
}
