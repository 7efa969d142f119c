// The attention viewer: every head as a small map on one canvas, the chosen head as a large map and as
// lines between tokens (a head view). Weights arrive as one byte each, round(255 * sqrt(w)).
"use strict";

(() => {
  const D = HS.readData("headscope-data");
  const L = D.model.n_layers, H = D.model.n_heads;
  const dpr = window.devicePixelRatio || 1;
  const WEIGHT = new Float32Array(256).map((_, c) => (c / 255) ** 2);
  const levels = {};
  for (const [name, lv] of Object.entries(D.levels)) levels[name] = {...lv, codes: null, thumbs: null};
  let level = "word", selected = {layer: 0, head: 0}, hoverRow = -1;

  document.getElementById("meta").textContent =
    `${D.model.name} · ${L} layers x ${H} heads · ${levels.piece.n} pieces, ${levels.word.n} words · ${D.source}`;
  document.getElementById("input-text").textContent = D.text;
  const notes = document.getElementById("notes");
  for (const n of D.notes) notes.append(HS.el("li", {}, n));

  function current() {
    const lv = levels[level];
    if (lv.codes === null) lv.codes = HS.bytes(lv.data);  // decoded once per level, kept as bytes
    return lv;
  }

  // ---- all heads ----
  const thumbs = document.getElementById("thumbs");
  const T = Math.max(28, Math.min(96, Math.floor(Math.min(560, window.innerWidth * 0.42) / H))), gap = 3;
  const left = 28, top = 16;
  const tw = left + H * (T + gap), th = top + L * (T + gap);
  thumbs.width = tw * dpr; thumbs.height = th * dpr;
  thumbs.style.width = `${tw}px`; thumbs.style.height = `${th}px`;
  thumbs.dataset.left = left; thumbs.dataset.top = top; thumbs.dataset.cell = T + gap;

  function drawThumbs() {
    const lv = current(), n = lv.n, ctx = thumbs.getContext("2d");
    if (lv.thumbs === null) {
      // One pooled image per head, rendered once per level: redraws (selection) only blit them.
      lv.thumbs = [];
      for (let i = 0; i < L * H; i++) lv.thumbs.push(HS.matrixCanvas(lv.codes, i * n * n, n, Math.ceil(T * dpr), {vmax: 255}));
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, tw, th);
    ctx.imageSmoothingEnabled = false;
    ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#333";
    ctx.textAlign = "center"; ctx.textBaseline = "bottom";
    for (let h = 0; h < H; h++) ctx.fillText(String(h), left + h * (T + gap) + T / 2, top - 2);
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (let l = 0; l < L; l++) ctx.fillText(`L${l}`, left - 4, top + l * (T + gap) + T / 2);
    for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
      ctx.drawImage(lv.thumbs[l * H + h], left + h * (T + gap), top + l * (T + gap), T, T);
    }
    ctx.strokeStyle = "#e4002b"; ctx.lineWidth = 2;
    ctx.strokeRect(left + selected.head * (T + gap) - 1, top + selected.layer * (T + gap) - 1, T + 2, T + 2);
  }

  thumbs.addEventListener("click", ev => {
    const h = Math.floor((ev.offsetX - left) / (T + gap)), l = Math.floor((ev.offsetY - top) / (T + gap));
    if (l >= 0 && l < L && h >= 0 && h < H) choose(l, h);
  });
  thumbs.addEventListener("keydown", ev => {
    const m = {ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1]}[ev.key];
    if (!m) return;
    ev.preventDefault();
    choose(Math.min(L - 1, Math.max(0, selected.layer + m[0])), Math.min(H - 1, Math.max(0, selected.head + m[1])));
  });

  // ---- the chosen head ----
  // The map sits in a margin of token labels: queries down the left (rows), keys along the bottom
  // (columns). Up to LABEL_ALL tokens each cell is at least MIN_CELL px, so every label is legible; longer
  // inputs keep the map at most MAX_MAP px and label every step-th token (the caption says which).
  const cellinfo = document.getElementById("cellinfo");
  const heat = document.getElementById("heatmap"), heatCaption = document.getElementById("heat-caption");
  const LABEL_ALL = 64, MIN_CELL = 10, MAX_MAP = 640, LABEL_CHARS = 12, PAD = 4;
  let S = 300, ML = 0, MT = PAD;
  const short = t => (t.length > LABEL_CHARS ? `${t.slice(0, LABEL_CHARS - 1)}…` : t);

  function offset() { return (selected.layer * H + selected.head) * current().n ** 2; }

  function drawHeat() {
    const lv = current(), n = lv.n, ctx = heat.getContext("2d");
    S = Math.min(MAX_MAP, Math.max(300, n * MIN_CELL));
    const cell = S / n, step = n <= LABEL_ALL ? 1 : Math.ceil(MIN_CELL / cell);
    const font = `${Math.min(12, Math.max(9, Math.floor(cell * step) - 1))}px system-ui, sans-serif`;
    const shown = [];
    for (let i = 0; i < n; i += step) shown.push([i, short(lv.tokens[i])]);
    // The margins fit the longest label: queries on the left, keys (rotated) below.
    ctx.font = font;
    const longest = Math.ceil(Math.max(0, ...shown.map(([, t]) => ctx.measureText(t).width)));
    ML = longest + 2 * PAD;
    const w = ML + S + PAD, h = MT + S + longest + 2 * PAD;
    heat.width = Math.round(w * dpr); heat.height = Math.round(h * dpr);  // also clears the canvas
    heat.style.width = `${w}px`; heat.style.height = `${h}px`;
    Object.assign(heat.dataset, {left: ML, top: MT, size: S, cell, labelStep: step});
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(HS.matrixCanvas(lv.codes, offset(), n, S * dpr, {vmax: 255}),
      Math.round(ML * dpr), Math.round(MT * dpr), Math.round(S * dpr), Math.round(S * dpr));
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.font = font; ctx.fillStyle = "#111"; ctx.textBaseline = "middle"; ctx.textAlign = "right";
    for (const [q, t] of shown) ctx.fillText(t, ML - PAD, MT + (q + 0.5) * cell);
    // Key labels read upwards, ending just below the map.
    for (const [k, t] of shown) {
      ctx.save();
      ctx.translate(ML + (k + 0.5) * cell, MT + S + PAD);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(t, 0, 0);
      ctx.restore();
    }
    heatCaption.textContent = step === 1
      ? `Rows: query tokens (left); columns: key tokens (below); all ${n} ${level}s labelled.`
      : `Rows: query tokens (left); columns: key tokens (below); ${n} ${level}s, too many to label all: ` +
        `one label every ${step} ${level}s (hover the map for the others).`;
  }

  heat.addEventListener("mousemove", ev => {
    const lv = current(), n = lv.n, x = ev.offsetX - ML, y = ev.offsetY - MT;
    if (x < 0 || y < 0 || x >= S || y >= S) return;
    const q = Math.min(n - 1, Math.floor(y / S * n)), k = Math.min(n - 1, Math.floor(x / S * n));
    cellinfo.textContent = `${lv.tokens[q]} → ${lv.tokens[k]}: ${HS.fmt(WEIGHT[lv.codes[offset() + q * n + k]])}`;
  });

  const lines = document.getElementById("lines"), ROW = 16, LW = 300, XL = 118, XR = 182;
  const threshold = document.getElementById("threshold"), thresholdValue = document.getElementById("threshold-value");

  function drawLines() {
    const lv = current(), n = lv.n, codes = lv.codes, off = offset(), min = Number(threshold.value);
    thresholdValue.textContent = min.toFixed(2);
    const h = n * ROW + 8;
    if (lines.height !== Math.round(h * dpr) || lines.width !== LW * dpr) {
      lines.width = LW * dpr; lines.height = Math.round(h * dpr);
      lines.style.width = `${LW}px`; lines.style.height = `${h}px`;
    }
    const ctx = lines.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, LW, h);
    ctx.font = "12px system-ui, sans-serif"; ctx.textBaseline = "middle";
    const y = i => 4 + i * ROW + ROW / 2;
    ctx.lineWidth = 1.5;
    for (let q = 0; q < n; q++) {
      if (hoverRow >= 0 && q !== hoverRow) continue;
      const base = off + q * n;
      for (let k = 0; k < n; k++) {
        const w = WEIGHT[codes[base + k]];
        if (w < (hoverRow >= 0 ? 0.005 : min) || w === 0) continue;
        ctx.strokeStyle = hoverRow >= 0 ? `rgba(228,0,43,${Math.min(1, 0.15 + w)})` : `rgba(8,81,156,${Math.min(1, w)})`;
        ctx.beginPath(); ctx.moveTo(XL + 4, y(q)); ctx.lineTo(XR - 4, y(k)); ctx.stroke();
      }
    }
    ctx.fillStyle = "#111";
    for (let i = 0; i < n; i++) {
      const label = lv.tokens[i].length > 16 ? `${lv.tokens[i].slice(0, 15)}…` : lv.tokens[i];
      ctx.textAlign = "right"; ctx.fillStyle = i === hoverRow ? "#e4002b" : "#111";
      ctx.fillText(label, XL, y(i));
      ctx.textAlign = "left"; ctx.fillStyle = "#111";
      ctx.fillText(label, XR, y(i));
    }
  }

  lines.addEventListener("mousemove", ev => {
    const row = ev.offsetX < (XL + XR) / 2 ? Math.floor((ev.offsetY - 4) / ROW) : -1;
    const next = row >= 0 && row < current().n ? row : -1;
    if (next !== hoverRow) { hoverRow = next; drawLines(); }
  });
  lines.addEventListener("mouseleave", () => { if (hoverRow >= 0) { hoverRow = -1; drawLines(); } });
  threshold.addEventListener("input", drawLines);

  function choose(layer, head) {
    selected = {layer, head};
    const name = `L${layer}H${head}`;
    document.getElementById("selected").textContent = `${name} · ${level}s`;
    document.getElementById("big-title").textContent = `Head ${name} (layer ${layer}, head ${head})`;
    thumbs.dataset.head = name;
    drawThumbs(); drawHeat(); drawLines();
  }

  for (const r of document.querySelectorAll("input[name=level]")) {
    r.addEventListener("change", () => { level = r.value; hoverRow = -1; choose(selected.layer, selected.head); });
  }
  // The page opens on the head its address names (the report links to example-0.html#L3H5), else on L0H0.
  function fromHash() {
    const m = /^#L(\d+)H(\d+)$/.exec(window.location.hash);
    return m && +m[1] < L && +m[2] < H ? {layer: +m[1], head: +m[2]} : {layer: 0, head: 0};
  }
  window.addEventListener("hashchange", () => { const at = fromHash(); choose(at.layer, at.head); });
  const t0 = performance.now();
  const start = fromHash();
  choose(start.layer, start.head);
  document.body.dataset.renderMs = String(Math.round(performance.now() - t0));
})();
