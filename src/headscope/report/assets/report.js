// The report's head explorer: a layer x head grid on one canvas, coloured by any per-head statistic;
// clicking a head fills the profile panel (statistics with ranks, per-head table rows, example maps).
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

  for (const c of columns) select.append(HS.el("option", {value: c.name}, c.label ? `${c.name} – ${c.label}` : c.name));
  if (current) select.value = current;

  // Models with many heads (30 x 9, 32 x 32): cells shrink so the whole grid fits on a screen.
  const cell = Math.max(6, Math.min(40, Math.floor(520 / H), Math.floor(640 / L)));
  const layerStep = Math.ceil(12 / cell), group = L > 16 ? 4 : 0;
  const left = 44, top = 22;
  const dpr = window.devicePixelRatio || 1;
  const width = left + H * cell + 2, height = top + L * cell + 2;
  grid.width = width * dpr; grid.height = height * dpr;
  grid.style.width = `${width}px`; grid.style.height = `${height}px`;
  grid.dataset.left = left; grid.dataset.top = top; grid.dataset.cell = cell;

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
    legend.textContent = !c ? "no per-head statistic"
      : c.constant ? `${c.name} is ${HS.fmt(c.min)} for every head (not mapped)`
      : `${c.name}: ${HS.fmt(c.min)} (dark) to ${HS.fmt(c.max)} (yellow)`;
    drawTop(c);
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
    for (const ex of examples) wrap.append(exampleFigure(ex, layer, head));
    parts.push(wrap);
    profile.replaceChildren(...parts);
    profile.dataset.head = name;
  }

  function exampleFigure(ex, layer, head) {
    const n = ex.shape[2], size = 140;
    const fig = HS.el("figure", {class: "example"});
    const canvas = HS.el("canvas", {width: size * dpr, height: size * dpr, "aria-label": `attention of ${`L${layer}H${head}`}`});
    canvas.style.width = `${size}px`; canvas.style.height = `${size}px`;
    const off = (layer * ex.shape[1] + head) * n * n;
    // Each thumbnail is scaled to its own largest weight: on a fixed 0..1 scale a broad head (every weight
    // near 1/n) would be near white, so the caption says what "darkest" is for this map.
    const vmax = HS.blockMax(ex.values, off, n * n);
    const src = HS.matrixCanvas(ex.values, off, n, size * dpr, EXAMPLE_SCALE);
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(src, 0, 0, size * dpr, size * dpr);
    const cap = HS.el("figcaption");
    cap.append(HS.el("span", {class: "where"},
      `${ex.name}, line ${ex.line} · ${n} tokens · rows attend to columns · colour ∝ √weight, scaled to ` +
      `this map's largest weight (white 0, darkest ${HS.fmt(vmax)})`));
    cap.append(HS.el("span", {class: "text"}, ex.text));
    const info = HS.el("span", {class: "cellinfo"}, "hover the map");
    cap.append(info);
    canvas.addEventListener("mousemove", ev => {
      const q = Math.min(n - 1, Math.floor(ev.offsetY / size * n)), k = Math.min(n - 1, Math.floor(ev.offsetX / size * n));
      info.textContent = `${ex.pieces[q]} → ${ex.pieces[k]}: ${HS.fmt(ex.values[off + q * n + k])}`;
    });
    fig.append(canvas, cap);
    return fig;
  }

  drawGrid();
  renderProfile();
})();
