// Shared by the report and the viewer: reading the page's data block, decoding base64 typed arrays,
// a viridis-like colour scale and drawing attention maps on canvas (never one DOM element per cell).
"use strict";

const HS = (() => {
  // Corpus text arrives as JSON inside <script type="application/json"> and is only ever placed with
  // textContent or canvas fillText, so a token such as <script> stays text.
  function readData(id) {
    return JSON.parse(document.getElementById(id).textContent);
  }

  function bytes(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function float32(b64) {
    return new Float32Array(bytes(b64).buffer);
  }

  let halfTable = null;
  // float16 -> float32 through a 65536-entry table: one lookup per weight.
  function float16(b64) {
    if (halfTable === null) {
      halfTable = new Float32Array(65536);
      for (let h = 0; h < 65536; h++) {
        const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
        halfTable[h] = e === 0 ? s * f * 2 ** -24 : e === 31 ? (f ? NaN : s * Infinity)
          : s * (1 + f / 1024) * 2 ** (e - 15);
      }
    }
    const raw = bytes(b64);
    const half = new Uint16Array(raw.buffer);
    const out = new Float32Array(half.length);
    for (let i = 0; i < half.length; i++) out[i] = halfTable[half[i]];
    return out;
  }

  const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
  // Attention maps: white to dark blue, so small weights fade into the page.
  const BLUES = [[255, 255, 255], [222, 235, 247], [158, 202, 225], [66, 146, 198], [8, 81, 156], [8, 48, 107]];

  function makeLut(stops) {
    const lut = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const x = (i / 255) * (stops.length - 1), k = Math.min(stops.length - 2, Math.floor(x)), t = x - k;
      for (let c = 0; c < 3; c++) lut[i * 3 + c] = stops[k][c] * (1 - t) + stops[k + 1][c] * t;
    }
    return lut;
  }
  const LUTS = {viridis: makeLut(VIRIDIS), blues: makeLut(BLUES)};

  function colour(t, name = "viridis") {
    if (!Number.isFinite(t)) return "#ccc";
    const i = Math.max(0, Math.min(255, Math.round(t * 255))) * 3, lut = LUTS[name];
    return `rgb(${lut[i]},${lut[i + 1]},${lut[i + 2]})`;
  }

  function blockMax(values, offset, count) {
    let m = 0;
    for (let p = offset; p < offset + count; p++) if (values[p] > m) m = values[p];
    return m;
  }

  // Paint the n x n block of `values` starting at `offset` into a canvas of min(n, size) pixels a side,
  // each pixel the largest weight of the block of cells it covers (so thin diagonals survive shrinking);
  // the caller scales it with drawImage. Colour is linear in v / vmax (vmax: the block's largest value),
  // or in sqrt(v / vmax) with `sqrt`, which keeps broad low weights visible.
  function matrixCanvas(values, offset, n, size = 1 << 30, {vmax = null, sqrt = false} = {}) {
    const s = Math.max(1, Math.min(n, size));
    const pooled = new Float32Array(s * s);
    const rowOf = new Int32Array(n), colOf = new Int32Array(n);
    for (let q = 0; q < n; q++) rowOf[q] = Math.floor(q * s / n) * s;
    for (let k = 0; k < n; k++) colOf[k] = Math.floor(k * s / n);
    for (let q = 0; q < n; q++) {
      const base = offset + q * n, r = rowOf[q];
      for (let k = 0; k < n; k++) {
        const v = values[base + k], t = r + colOf[k];
        if (v > pooled[t]) pooled[t] = v;
      }
    }
    const top = (vmax === null ? blockMax(values, offset, n * n) : vmax) || 1;
    const c = document.createElement("canvas");
    c.width = s; c.height = s;
    const ctx = c.getContext("2d");
    const img = ctx.createImageData(s, s), px = img.data, lut = LUTS.blues;
    for (let p = 0; p < s * s; p++) {
      let v = pooled[p] / top;
      if (sqrt) v = Math.sqrt(v);
      const i = (v >= 1 ? 255 : v <= 0 ? 0 : Math.round(v * 255)) * 3;
      px[4 * p] = lut[i]; px[4 * p + 1] = lut[i + 1]; px[4 * p + 2] = lut[i + 2]; px[4 * p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    return c;
  }

  function el(tag, attrs = {}, text = null) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== null) e.textContent = String(text);
    return e;
  }

  function fmt(v) {
    if (v === null || v === undefined || (typeof v === "number" && !Number.isFinite(v))) return "–";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toFixed(a < 1 ? 3 : 2);
  }

  return {readData, bytes, float32, float16, colour, blockMax, matrixCanvas, el, fmt, LUTS};
})();
