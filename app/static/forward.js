// The forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Ho et al. 2020, eq. 4),
// computed in the page from the server's schedule, with reproducible noise.

/** mulberry32: a small seeded 32-bit PRNG; returns uniforms in [0, 1). */
export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `count` standard normal samples from `seed`, by the Box-Muller transform. */
export function gaussianNoise(seed, count) {
  const uniform = mulberry32(seed);
  const out = new Float64Array(count);
  for (let i = 0; i < count; i += 2) {
    const u1 = 1 - uniform(); // in (0, 1]: log(0) would be -Infinity
    const u2 = uniform();
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < count) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

/**
 * abar at paper time t in 0..T: t = 0 is x_0 itself (abar = 1); the server's alphas_cumprod[i]
 * is abar at t = i + 1, as q(x_1 | x_0) already has beta_1 of noise.
 */
export function alphaBar(alphasCumprod, t) {
  return t <= 0 ? 1 : alphasCumprod[Math.min(t, alphasCumprod.length) - 1];
}

/**
 * Noises an RGBA image: x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps, with pixels mapped to
 * [-1, 1] as the model sees them and back. `noise` holds one sample per pixel per channel
 * (channels = 1: one per pixel, the same in R, G and B, so a grey image stays grey).
 * Reusing one `noise` for every t gives exact samples of each marginal q(x_t | x_0), the same
 * noise at growing strength, which is what makes a strip of them readable.
 * @param {ImageData} image
 * @param {number} abar
 * @param {Float64Array} noise
 * @param {number} channels
 * @returns {ImageData}
 */
export function qSample(image, abar, noise, channels) {
  const { width, height, data } = image;
  const out = new ImageData(width, height);
  const signal = Math.sqrt(abar);
  const spread = Math.sqrt(1 - abar);
  for (let p = 0; p < width * height; p++) {
    for (let c = 0; c < 3; c++) {
      const x0 = data[4 * p + c] / 127.5 - 1;
      const eps = noise[channels === 1 ? p : 3 * p + c];
      out.data[4 * p + c] = Math.round((signal * x0 + spread * eps + 1) * 127.5); // clamped by the array
    }
    out.data[4 * p + 3] = 255;
  }
  return out;
}

/** The t values of a strip: 0 (x_0) up to T, evenly spaced. */
export function stripTimes(T, count) {
  return Array.from({ length: count }, (_, i) => Math.round((i * T) / (count - 1)));
}
