// The 28x28 images the page sends and shows, computed as TensorFlow computes them
// (tf.image.resize(method="area"), tf.round).
//
// Drawn digits are prepared here as MNIST's were (prepareDrawing): the strokes' bounding box is
// fitted into 20x20 by area averaging, keeping its aspect ratio, and placed in the 28x28 frame so
// that its centre of mass falls on the frame's centre. The server does not do this: serve_images
// must answer photos and Fashion-MNIST images exactly as TF Serving does, and only the page knows
// that its input is strokes on an empty canvas. Dropped, pasted or opened files are sent as they
// are; their preview repeats serve_images' own preparation (prepareLikeServeImages), so the 28x28
// shown is the one the model sees.

export const FRAME = 28;           // MNIST's frame, pixels.
const BOX = 20;                    // MNIST's box for the digit inside it.
const GRAY = [0.2989, 0.587, 0.114];  // tf.image.rgb_to_grayscale's weights.

// For each output pixel of an axis of n -> m pixels: [input index, weight] pairs of its box.
function areaWeights(n, m) {
  const scale = n / m;
  const weights = [];
  for (let i = 0; i < m; i++) {
    const start = i * scale;
    const end = (i + 1) * scale;
    const pairs = [];
    for (let j = Math.floor(start); j < Math.min(Math.ceil(end), n); j++) {
      const overlap = Math.min(j + 1, end) - Math.max(j, start);
      if (overlap > 0) pairs.push([j, overlap / scale]);
    }
    weights.push(pairs);
  }
  return weights;
}

// Area-averaging resize of a w x h float image to dw x dh, one axis at a time.
function areaResize(pixels, w, h, dw, dh) {
  const across = areaWeights(w, dw);
  const down = areaWeights(h, dh);
  const rows = new Float64Array(h * dw);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < dw; x++) {
      let sum = 0;
      for (const [j, weight] of across[x]) sum += pixels[y * w + j] * weight;
      rows[y * dw + x] = sum;
    }
  }
  const out = new Float64Array(dw * dh);
  for (let y = 0; y < dh; y++) {
    for (const [j, weight] of down[y]) {
      for (let x = 0; x < dw; x++) out[y * dw + x] += rows[j * dw + x] * weight;
    }
  }
  return out;
}

function roundHalfEven(value) {
  const floor = Math.floor(value);
  const fraction = value - floor;
  if (fraction !== 0.5) return Math.round(value);
  return floor % 2 === 0 ? floor : floor + 1;
}

function toBytes(pixels) {
  return Uint8ClampedArray.from(pixels, (v) => roundHalfEven(Math.min(255, Math.max(0, v))));
}

// The drawing as MNIST prepared its digits; null for an empty pad.
export function prepareDrawing(canvas) {
  const {width, height} = canvas;
  const rgba = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  let left = width, right = -1, top = height, bottom = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (rgba[(y * width + x) * 4] > 0) {
        left = Math.min(left, x); right = Math.max(right, x);
        top = Math.min(top, y); bottom = Math.max(bottom, y);
      }
    }
  }
  if (right < 0) return null;
  const w = right - left + 1, h = bottom - top + 1;
  const ink = new Float64Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) ink[y * w + x] = rgba[((top + y) * width + left + x) * 4];
  }
  const side = Math.max(w, h);
  const bw = Math.max(1, Math.round(w * BOX / side)), bh = Math.max(1, Math.round(h * BOX / side));
  const boxed = areaResize(ink, w, h, bw, bh);
  let mass = 0, mx = 0, my = 0;
  for (let y = 0; y < bh; y++) {
    for (let x = 0; x < bw; x++) {
      const v = boxed[y * bw + x];
      mass += v; mx += v * (x + 0.5); my += v * (y + 0.5);
    }
  }
  const clamp = (v, hi) => Math.min(hi, Math.max(0, v));
  const ox = clamp(Math.round(FRAME / 2 - mx / mass), FRAME - bw);
  const oy = clamp(Math.round(FRAME / 2 - my / mass), FRAME - bh);
  const frame = new Float64Array(FRAME * FRAME);
  for (let y = 0; y < bh; y++) {
    for (let x = 0; x < bw; x++) frame[(oy + y) * FRAME + ox + x] = boxed[y * bw + x];
  }
  return toBytes(frame);
}

// What serve_images makes of an image: gray, inverted on a bright border, padded to a square
// with black, area-resized to 28x28, rounded.
export function prepareLikeServeImages(bitmap) {
  const {width, height} = bitmap;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d", {willReadFrequently: true});
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, width, height).data;
  const gray = new Float64Array(width * height);
  for (let i = 0; i < gray.length; i++) {
    gray[i] = GRAY[0] * rgba[4 * i] + GRAY[1] * rgba[4 * i + 1] + GRAY[2] * rgba[4 * i + 2];
  }
  let border = 0;
  for (let x = 0; x < width; x++) border += gray[x] + gray[(height - 1) * width + x];
  for (let y = 0; y < height; y++) border += gray[y * width] + gray[y * width + width - 1];
  const invert = border / (2 * (width + height)) > 127.5;
  const side = Math.max(width, height);
  const square = new Float64Array(side * side);
  const dx = (side - width) >> 1, dy = (side - height) >> 1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const v = gray[y * width + x];
      square[(y + dy) * side + x + dx] = invert ? 255 - v : v;
    }
  }
  return toBytes(areaResize(square, side, side, FRAME, FRAME));
}
