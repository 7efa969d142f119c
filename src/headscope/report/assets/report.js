// The report's head explorer: a layer x head grid on one canvas, coloured by any per-head statistic;
// clicking a head fills the profile panel (atlas labels, statistics with ranks, per-head table rows, example
// maps with links to their viewer pages). Heads named in the atlas above are links to their profiles.
"use strict";

(() => {
  const D = HS.readData("headscope-data");
  const L = D.n_layers, H = D.n_heads;
  const columns = D.columns.map(c => ({...c, values: HS.float32(c.values)}));
  const byName = Object.fromEntries(columns.map(c => [c.name, c]));
  const examples = (D.examples || []).map(e => ({...e, values: HS.float16(e.attention)}));
  // Example maps: colour by sqrt(weight / the map's own largest weight), see exampleFigure.
  const EXAMPLE_SCALE = {vmax: null, sqrt: true};
  const grid = document.getElementById("grid");
  const select = document.getElementById("stat");
  const tooltip = document.getElementById("tooltip");
  const profile = document.getElementById("profile");
  let current = byName[D.default_column] ? D.default_column : (columns[0] || {}).name;
  let selected = {layer: 0, head: 0};
  let sortLowest = false, showAll = false;

  // Ranks per statistic, 1 = largest value; NaN heads get no rank.
  for (const c of columns) {
    const order = [...c.values.keys()].filter(i => Number.isFinite(c.values[i]))
      .sort((a, b) => c.values[b] - c.values[a]);
    c.rank = new Int32Array(c.values.length);
    order.forEach((i, r) => { c.rank[i] = r + 1; });
    c.min = order.length ? c.values[order[order.length - 1]] : 0;
    c.max = order.length ? c.values[order[0]] : 1;
    // A statistic with one value for every head says nothing about any head: shown, never ranked or mapped.
    c.constant = order.length > 0 && c.max === c.min;
    if (c.constant) c.rank.fill(0);
    c.ranked = c.constant ? 0 : order.length;
  }

  for (const c of columns) select.append(HS.el("option", {value: c.name, title: c.label || ""}, c.label ? `${c.name} – ${c.label}` : c.name));
  if (current) select.value = current;
  const meaning = document.getElementById("stat-meaning");
  const cbMin = document.getElementById("cb-min"), cbMax = document.getElementById("cb-max");
  const colourbar = document.getElementById("colourbar");

  // Models with many heads (30 x 9, 32 x 32): cells shrink so the whole grid fits on a screen.
  const cell = Math.max(6, Math.min(40, Math.floor(520 / H), Math.floor(640 / L)));
  const layerStep = Math.ceil(12 / cell), group = L > 16 ? 4 : 0;
  const left = 44, top = 22;
  const dpr = window.devicePixelRatio || 1;
  const width = left + H * cell + 2, height = top + L * cell + 2;
  grid.width = width * dpr; grid.height = height * dpr;
  grid.style.width = `${width}px`; grid.style.height = `${height}px`;
  grid.dataset.left = left; grid.dataset.top = top; grid.dataset.cell = cell;
  if (colourbar) colourbar.style.height = `${L * cell}px`;
  if (colourbar) colourbar.style.marginTop = `${top - 8}px`;

  function drawGrid() {
    const ctx = grid.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#333";
    ctx.textAlign = "center"; ctx.textBaseline = "bottom";
    const step = Math.ceil(16 / cell);
    for (let h = 0; h < H; h += step) ctx.fillText(String(h), left + h * cell + cell / 2, top - 4);
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (let l = 0; l < L; l += layerStep) ctx.fillText(`L${l}`, left - 6, top + l * cell + cell / 2);
    const c = byName[current];
    const span = c && c.max > c.min ? c.max - c.min : 1;
    for (let l = 0; l < L; l++) {
      for (let h = 0; h < H; h++) {
        const v = c ? c.values[l * H + h] : NaN;
        ctx.fillStyle = HS.colour(c && !c.constant ? (v - c.min) / span : NaN);
        ctx.fillRect(left + h * cell, top + l * cell, cell - 1, cell - 1);
      }
    }
    // Groups of four layers, so a head of a deep model can be found by eye.
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
    for (let l = group; group && l < L; l += group) {
      ctx.beginPath(); ctx.moveTo(left, top + l * cell - 0.5); ctx.lineTo(left + H * cell, top + l * cell - 0.5); ctx.stroke();
    }
    ctx.strokeStyle = "#e4002b"; ctx.lineWidth = 2.5;
    ctx.strokeRect(left + selected.head * cell - 1, top + selected.layer * cell - 1, cell + 1, cell + 1);
    const legend = document.getElementById("legend");
    const [lo, hi] = c ? ends(c.min, c.max) : ["", ""];
    legend.textContent = !c ? "no per-head statistic"
      : c.constant ? `${c.name} is ${HS.fmt(c.min)} for every head (not mapped).`
      : `${c.name}: ${lo} (dark) to ${hi} (yellow).`;
    if (meaning) meaning.textContent = c ? (c.label ? `${c.name}: ${c.label}` : c.name) : "";
    if (colourbar) {
      colourbar.hidden = !c || c.constant;
      cbMin.textContent = lo; cbMax.textContent = hi;
    }
    if (c) Object.assign(grid.dataset, {stat: c.name, min: c.min, max: c.max, constant: c.constant});
    drawTop(c);
  }

  // The two ends of a colour scale, with as many digits as it takes to tell them apart.
  function ends(min, max) {
    let a = HS.fmt(min), b = HS.fmt(max);
    for (let digits = 3; a === b && digits <= 7; digits++) { a = min.toPrecision(digits); b = max.toPrecision(digits); }
    return [a, b];
  }

  function drawTop(c) {
    const list = document.getElementById("top-heads");
    list.replaceChildren();
    if (!c || c.constant) return;
    const order = [...c.values.keys()].filter(i => Number.isFinite(c.values[i])).sort((a, b) => c.rank[a] - c.rank[b]);
    if (sortLowest) order.reverse();
    for (const i of order.slice(0, showAll ? order.length : 8)) {
      const b = HS.el("button", {type: "button", "data-layer": Math.floor(i / H), "data-head": i % H},
        `L${Math.floor(i / H)}H${i % H} ${HS.fmt(c.values[i])}`);
      b.addEventListener("click", () => choose(Math.floor(i / H), i % H));
      list.append(b);
    }
  }

  function headAt(ev) {
    const h = Math.floor((ev.offsetX - left) / cell), l = Math.floor((ev.offsetY - top) / cell);
    return l >= 0 && l < L && h >= 0 && h < H ? {layer: l, head: h} : null;
  }

  grid.addEventListener("mousemove", ev => {
    const at = headAt(ev), c = byName[current];
    if (!at || !c) { tooltip.hidden = true; return; }
    tooltip.hidden = false;
    tooltip.textContent = `L${at.layer}H${at.head}  ${c.name} = ${HS.fmt(c.values[at.layer * H + at.head])}`;
    tooltip.style.left = `${ev.pageX + 12}px`; tooltip.style.top = `${ev.pageY + 12}px`;
  });
  grid.addEventListener("mouseleave", () => { tooltip.hidden = true; });
  grid.addEventListener("click", ev => { const at = headAt(ev); if (at) choose(at.layer, at.head); });
  grid.addEventListener("keydown", ev => {
    const moves = {ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1]}[ev.key];
    if (!moves) return;
    ev.preventDefault();
    choose(Math.min(L - 1, Math.max(0, selected.layer + moves[0])), Math.min(H - 1, Math.max(0, selected.head + moves[1])));
  });
  select.addEventListener("change", () => { current = select.value; drawGrid(); });
  // The head list below the grid sorts every head by the chosen statistic, either way.
  const sortOrder = document.getElementById("sort-order"), sortAll = document.getElementById("sort-all");
  if (sortOrder) sortOrder.addEventListener("change", () => { sortLowest = sortOrder.value === "lowest"; drawTop(byName[current]); });
  if (sortAll) sortAll.addEventListener("change", () => { showAll = sortAll.checked; drawTop(byName[current]); });

  function choose(layer, head) {
    selected = {layer, head};
    drawGrid();
    renderProfile();
  }

  // A head named anywhere on the page (the atlas) opens its profile.
  for (const a of document.querySelectorAll("a.head-link[data-head]")) {
    a.addEventListener("click", () => {
      const m = /^L(\d+)H(\d+)$/.exec(a.dataset.head);
      if (m && +m[1] < L && +m[2] < H) choose(+m[1], +m[2]);
    });
  }

  function table(head, rows) {
    const t = HS.el("table");
    const tr = HS.el("tr");
    for (const h of head) tr.append(HS.el("th", {}, h));
    t.append(tr);
    for (const r of rows) {
      const row = HS.el("tr");
      for (const v of r) row.append(HS.el("td", {}, HS.fmt(v)));
      t.append(row);
    }
    return t;
  }

  function renderProfile() {
    const {layer, head} = selected, i = layer * H + head;
    const name = `L${layer}H${head}`;
    const parts = [HS.el("h3", {id: "profile-title"}, `Head ${name} (layer ${layer}, head ${head})`)];
    for (const t of D.text_columns || []) {
      parts.push(HS.el("p", {class: "tag"}, `${t.name}: ${t.values[i] ?? "–"}`));
    }
    const pages = D.viewer_pages || [];
    if (pages.length) {
      const p = HS.el("p", {class: "viewer-links"});
      p.append(HS.el("a", {id: "viewer-link", href: `${pages[0]}#${name}`, target: "_blank", rel: "noopener"},
        `Open ${name} in the viewer`), ` (every token of ${examples[0] ? `${examples[0].name}, line ${examples[0].line}` : "a kept sequence"}` +
        (pages.length > 1 ? `; the maps below link to the other ${pages.length - 1})` : ")"));
      parts.push(p);
    }
    const labels = (D.labels || {})[String(i)] || [];
    parts.push(HS.el("h4", {}, "What it does (atlas)"));
    if (labels.length) {
      const ul = HS.el("ul", {class: "labels"});
      for (const [group, evidence] of labels) {
        const li = HS.el("li");
        li.append(HS.el("b", {}, group), ` ${evidence}`);
        ul.append(li);
      }
      parts.push(ul);
    } else {
      parts.push(HS.el("p", {class: "note"}, "No label: it fits none of the rules this run measured."));
    }
    parts.push(HS.el("h4", {}, "Statistics (rank 1 = highest of all heads)"));
    const stats = HS.el("div", {class: "stats"});
    stats.append(table(["statistic", "value", "rank"], columns.map(c =>
      [c.name, c.values[i], c.constant ? "same for all heads" : c.rank[i] ? `${c.rank[i]} / ${c.ranked}` : "–"])));
    parts.push(stats);
    for (const t of D.tables || []) {
      parts.push(HS.el("h4", {}, t.title));
      const rows = t.heads[String(i)] || [];
      parts.push(rows.length ? table(t.columns, rows) : HS.el("p", {class: "note"}, t.empty));
    }
    parts.push(HS.el("h4", {}, "Attention on example sequences"));
    if (!examples.length) parts.push(HS.el("p", {class: "note"}, "No example maps in this run (analysis 'examples')."));
    const wrap = HS.el("div", {class: "examples"});
    examples.forEach((ex, k) => wrap.append(exampleFigure(ex, layer, head, (D.viewer_pages || [])[k])));
    parts.push(wrap);
    profile.replaceChildren(...parts);
    profile.dataset.head = name;
  }

  // A kept sequence's map of one head. When its tokens fit (cells of at least LABEL_CELL px), queries are
  // labelled down the left and keys below, as in the viewer; otherwise hovering the map names them.
  const LABEL_CELL = 9, LABEL_CHARS = 10;
  function exampleFigure(ex, layer, head, page) {
    const n = ex.shape[2];
    const labelled = n * LABEL_CELL <= 220;
    const size = labelled ? Math.max(140, n * LABEL_CELL) : 140, cellPx = size / n;
    const short = t => (t.length > LABEL_CHARS ? `${t.slice(0, LABEL_CHARS - 1)}…` : t);
    const fontPx = Math.min(11, Math.max(8, Math.floor(cellPx) - 1));
    const font = `${fontPx}px system-ui, sans-serif`;
    let margin = 0;
    if (labelled) {
      const m = document.createElement("canvas").getContext("2d");
      m.font = font;
      margin = Math.ceil(Math.max(...ex.pieces.map(t => m.measureText(short(t)).width))) + 4;
    }
    const w = margin + size, h = size + margin;
    const fig = HS.el("figure", {class: "example"});
    fig.style.width = `${Math.max(140, w)}px`;
    const canvas = HS.el("canvas", {width: Math.round(w * dpr), height: Math.round(h * dpr),
      "aria-label": `attention of L${layer}H${head}`});
    canvas.style.width = `${w}px`; canvas.style.height = `${h}px`;
    Object.assign(canvas.dataset, {left: margin, top: 0, size, labelled});
    const off = (layer * ex.shape[1] + head) * n * n;
    // Each thumbnail is scaled to its own largest weight: on a fixed 0..1 scale a broad head (every weight
    // near 1/n) would be near white, so the caption says what "darkest" is for this map.
    const vmax = HS.blockMax(ex.values, off, n * n);
    const src = HS.matrixCanvas(ex.values, off, n, size * dpr, EXAMPLE_SCALE);
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(src, Math.round(margin * dpr), 0, Math.round(size * dpr), Math.round(size * dpr));
    if (labelled) {
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.font = font; ctx.fillStyle = "#111"; ctx.textBaseline = "middle"; ctx.textAlign = "right";
      ex.pieces.forEach((t, q) => ctx.fillText(short(t), margin - 3, (q + 0.5) * cellPx));
      ex.pieces.forEach((t, k) => {
        ctx.save(); ctx.translate(margin + (k + 0.5) * cellPx, size + 3); ctx.rotate(-Math.PI / 2);
        ctx.fillText(short(t), 0, 0); ctx.restore();
      });
    }
    const cap = HS.el("figcaption");
    cap.append(HS.el("span", {class: "where"},
      `${ex.name}, line ${ex.line} · ${n} tokens · rows attend to columns · colour ∝ √weight, scaled to ` +
      `this map's largest weight (white 0, darkest ${HS.fmt(vmax)})`));
    if (page) cap.append(HS.el("a", {class: "viewer-link", href: `${page}#L${layer}H${head}`, target: "_blank",
      rel: "noopener"}, "open in the viewer"));
    cap.append(HS.el("span", {class: "text"}, ex.text));
    const info = HS.el("span", {class: "cellinfo"}, "hover the map");
    cap.append(info);
    canvas.addEventListener("mousemove", ev => {
      const x = ev.offsetX - margin, y = ev.offsetY;
      if (x < 0 || y < 0 || x >= size || y >= size) return;
      const q = Math.min(n - 1, Math.floor(y / size * n)), k = Math.min(n - 1, Math.floor(x / size * n));
      info.textContent = `${ex.pieces[q]} → ${ex.pieces[k]}: ${HS.fmt(ex.values[off + q * n + k])}`;
    });
    fig.append(canvas, cap);
    return fig;
  }

  drawGrid();
  renderProfile();
})();
