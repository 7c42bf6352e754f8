// PNG encoding of the model's own pixels, exactly: a canvas's toBlob writes RGBA (a mode the
// server would have to convert), so uploads and masks are written here as 8-bit grey or RGB
// PNGs (ISO/IEC 15948: signature, IHDR, one zlib IDAT with filter 0 rows, IEND).

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set([...type].map((ch) => ch.charCodeAt(0)), 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

async function zlib(bytes) {
  // CompressionStream's 'deflate' is the zlib format (RFC 1950) that IDAT holds.
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream('deflate'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * A PNG of `pixels` (row-major, `channels` = 1 grey or 3 RGB bytes a pixel) as bytes.
 * @param {number} width
 * @param {number} height
 * @param {number} channels
 * @param {Uint8Array} pixels
 */
export async function encodePng(width, height, channels, pixels) {
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header.set([8, channels === 1 ? 0 : 2, 0, 0, 0], 8); // bit depth 8, grey or truecolour
  const stride = width * channels;
  const raw = new Uint8Array(height * (stride + 1)); // each row: filter type 0, then its bytes
  for (let y = 0; y < height; y++) raw.set(pixels.subarray(y * stride, (y + 1) * stride), y * (stride + 1) + 1);
  const signature = [137, 80, 78, 71, 13, 10, 26, 10];
  const parts = [new Uint8Array(signature), chunk('IHDR', header), chunk('IDAT', await zlib(raw)), chunk('IEND', new Uint8Array())];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (out.set(p, at), at + p.length), 0);
  return out;
}

/** Bytes as base64, in pieces (String.fromCharCode(...bytes) overflows the stack on big arrays). */
export function base64(bytes) {
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

/**
 * The model's pixels of an RGBA ImageData: grey (Pillow's ITU-R 601 luma, L = (19595 R +
 * 38470 G + 7471 B + 32768) >> 16, so a grey pixel keeps its value exactly) or RGB.
 */
export function modelPixels(image, channels) {
  const { width, height, data } = image;
  const out = new Uint8Array(width * height * channels);
  for (let p = 0; p < width * height; p++) {
    const [r, g, b] = data.subarray(4 * p, 4 * p + 3);
    if (channels === 1) out[p] = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16;
    else out.set([r, g, b], 3 * p);
  }
  return out;
}
