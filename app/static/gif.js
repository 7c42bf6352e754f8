// A small GIF89a encoder: one global palette, LZW-compressed frames, looping.
//
// Written here because the page must not fetch anything from outside, and the denoising chain
// is a handful of tiny frames: no dithering, no local palettes, no transparency needed.

/**
 * Encodes indexed frames as an animated GIF.
 * @param {object} o
 * @param {number} o.width
 * @param {number} o.height
 * @param {Uint8Array} o.palette  RGB triples, at most 256 of them
 * @param {Uint8Array[]} o.frames  width*height palette indices each, row-major
 * @param {number[]} o.delays  per frame, in hundredths of a second
 * @param {number} [o.loop=0]  repetitions; 0 loops forever
 * @returns {Uint8Array}
 */
export function encodeGif({ width, height, palette, frames, delays, loop = 0 }) {
  const colors = palette.length / 3;
  if (!Number.isInteger(colors) || colors < 1 || colors > 256) throw new Error('palette: 1 to 256 RGB triples');
  // The colour table holds 2^(bits) entries, bits >= 1; LZW codes start at >= 2 bits.
  let bits = 1;
  while (1 << bits < colors) bits++;
  const out = new ByteWriter();
  out.ascii('GIF89a');
  out.u16(width);
  out.u16(height);
  out.byte(0x80 | 0x70 | (bits - 1)); // global colour table, 8-bit colour resolution, 2^bits entries
  out.byte(0); // background colour index
  out.byte(0); // square pixels
  const table = new Uint8Array(3 << bits);
  table.set(palette);
  out.bytes(table);
  // NETSCAPE2.0 application extension: the loop count that every browser honours.
  out.bytes([0x21, 0xff, 0x0b]);
  out.ascii('NETSCAPE2.0');
  out.bytes([0x03, 0x01]);
  out.u16(loop);
  out.byte(0);
  frames.forEach((indices, i) => {
    if (indices.length !== width * height) throw new Error(`frame ${i}: expected ${width * height} pixels`);
    // Graphic control extension: disposal 1 (leave the frame in place), the delay, no transparency.
    out.bytes([0x21, 0xf9, 0x04, 0x04]);
    out.u16(delays[i] ?? 10);
    out.bytes([0, 0]);
    // Image descriptor: the whole canvas, no local colour table, not interlaced.
    out.byte(0x2c);
    out.u16(0);
    out.u16(0);
    out.u16(width);
    out.u16(height);
    out.byte(0);
    const minCodeSize = Math.max(2, bits);
    out.byte(minCodeSize);
    const data = lzw(indices, minCodeSize);
    for (let at = 0; at < data.length; at += 255) { // data sub-blocks of at most 255 bytes
      const block = data.subarray(at, at + 255);
      out.byte(block.length);
      out.bytes(block);
    }
    out.byte(0);
  });
  out.byte(0x3b); // trailer
  return out.result();
}

/** GIF's variable-width LZW (codes of minCodeSize+1 up to 12 bits, least significant bit first). */
export function lzw(indices, minCodeSize) {
  const clear = 1 << minCodeSize;
  const end = clear + 1;
  const bits = new BitWriter();
  let codeSize = minCodeSize + 1;
  let next = end + 1;
  let table = new Map(); // (prefix code << 8 | index) -> code
  bits.write(clear, codeSize);
  if (indices.length === 0) {
    bits.write(end, codeSize);
    return bits.result();
  }
  let prefix = indices[0];
  for (let i = 1; i < indices.length; i++) {
    const k = indices[i];
    const key = (prefix << 8) | k;
    const code = table.get(key);
    if (code !== undefined) {
      prefix = code;
      continue;
    }
    bits.write(prefix, codeSize);
    if (next === 4096) {
      // The table is full: start over, as the decoder will when it reads the clear code.
      bits.write(clear, codeSize);
      table = new Map();
      codeSize = minCodeSize + 1;
      next = end + 1;
    } else {
      // The decoder adds each entry one code later than the encoder does, so the width grows
      // when the entry about to be added no longer fits, not after it has been added.
      if (next >= 1 << codeSize) codeSize++;
      table.set(key, next++);
    }
    prefix = k;
  }
  bits.write(prefix, codeSize);
  bits.write(end, codeSize);
  return bits.result();
}

/**
 * Maps RGBA frames onto one palette: 256 greys when every pixel is grey (grayscale models),
 * else a 6x6x6 colour cube.
 * @param {Uint8ClampedArray[]} rgbaFrames
 * @returns {{palette: Uint8Array, frames: Uint8Array[]}}
 */
export function indexFrames(rgbaFrames) {
  const grey = rgbaFrames.every((px) => {
    for (let i = 0; i < px.length; i += 4) if (px[i] !== px[i + 1] || px[i] !== px[i + 2]) return false;
    return true;
  });
  const palette = new Uint8Array(256 * 3);
  if (grey) {
    for (let v = 0; v < 256; v++) palette.set([v, v, v], v * 3);
  } else {
    for (let i = 0; i < 216; i++) palette.set([51 * Math.floor(i / 36), 51 * (Math.floor(i / 6) % 6), 51 * (i % 6)], i * 3);
  }
  const frames = rgbaFrames.map((px) => {
    const indices = new Uint8Array(px.length / 4);
    for (let p = 0; p < indices.length; p++) {
      const [r, g, b] = [px[4 * p], px[4 * p + 1], px[4 * p + 2]];
      indices[p] = grey ? r : Math.round(r / 51) * 36 + Math.round(g / 51) * 6 + Math.round(b / 51);
    }
    return indices;
  });
  return { palette, frames };
}

class ByteWriter {
  constructor() {
    this.data = new Uint8Array(1024);
    this.length = 0;
  }

  byte(b) {
    if (this.length === this.data.length) {
      const bigger = new Uint8Array(this.data.length * 2);
      bigger.set(this.data);
      this.data = bigger;
    }
    this.data[this.length++] = b;
  }

  bytes(list) {
    for (const b of list) this.byte(b);
  }

  u16(v) {
    this.byte(v & 0xff);
    this.byte((v >> 8) & 0xff);
  }

  ascii(text) {
    for (const c of text) this.byte(c.charCodeAt(0));
  }

  result() {
    return this.data.slice(0, this.length);
  }
}

class BitWriter {
  constructor() {
    this.out = new ByteWriter();
    this.acc = 0;
    this.count = 0;
  }

  write(code, size) {
    this.acc |= code << this.count;
    this.count += size;
    while (this.count >= 8) {
      this.out.byte(this.acc & 0xff);
      this.acc >>>= 8;
      this.count -= 8;
    }
  }

  result() {
    if (this.count > 0) this.out.byte(this.acc & 0xff);
    return this.out.result();
  }
}
