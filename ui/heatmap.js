// heatmap: a canvas of layers (rows) x points over steps (columns), the
// colour of a cell the metric's value on a log scale, grey where there is
// none; hover names the cell, a click opens it.

// viridis, five stops
const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

function colour(t) {
  const x = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x)), f = x - i;
  const a = STOPS[i], b = STOPS[i + 1];
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(',')})`;
}

// The log scale of the values of rows (arrays with nulls): [lo, hi].
function range(rows) {
  let hi = 0, lo = Infinity;
  for (const r of rows) for (const v of r) if (v !== null && v > 0) {
    if (v > hi) hi = v;
    if (v < lo) lo = v;
  }
  if (hi === 0) return [1e-12, 1];
  lo = Math.max(lo, hi * 1e-4);
  return lo < hi ? [lo, hi] : [hi / 10, hi];
}

export class Heatmap {
  // canvas: where to draw; tip: the tooltip element; onpick(layer, step).
  constructor(canvas, tip, onpick) {
    this.canvas = canvas;
    this.tip = tip;
    this.rowH = 14;
    this.layers = [];
    this.steps = [];
    this.rows = []; // per layer, values parallel to steps
    canvas.addEventListener('mousemove', (ev) => this.hover(ev));
    canvas.addEventListener('mouseleave', () => { this.tip.hidden = true; });
    canvas.addEventListener('click', (ev) => {
      const c = this.cell(ev);
      if (c) onpick(this.layers[c.row], this.steps[c.col]);
    });
  }

  set(layers, steps, rows, metric) {
    // a few layers get taller rows, many at least 14 px each
    this.rowH = Math.max(14, Math.min(28, Math.floor(400 / Math.max(1, layers.length))));
    this.layers = layers;
    this.steps = steps;
    this.rows = rows;
    this.metric = metric;
    this.draw();
  }

  draw() {
    const cv = this.canvas, n = this.steps.length;
    cv.height = Math.max(1, this.layers.length * this.rowH);
    const ctx = cv.getContext('2d');
    const w = cv.width / Math.max(1, n);
    const [lo, hi] = range(this.rows);
    this.scale = [lo, hi];
    const llo = Math.log(lo), span = Math.log(hi) - llo || 1;
    ctx.fillStyle = '#ddd';
    ctx.fillRect(0, 0, cv.width, cv.height);
    for (let r = 0; r < this.rows.length; r++) {
      const row = this.rows[r];
      for (let c = 0; c < n; c++) {
        const v = row[c];
        if (v === null || v === undefined) continue;
        ctx.fillStyle = colour(v > 0 ? (Math.log(v) - llo) / span : 0);
        ctx.fillRect(Math.floor(c * w), r * this.rowH, Math.ceil(w), this.rowH - 1);
      }
    }
    cv.dataset.rows = String(this.layers.length);
    cv.dataset.cols = String(n);
    cv.dataset.rowHeight = String(this.rowH);
    cv.dataset.colWidth = String(w);
  }

  // The legend: a gradient from lo to hi drawn on canvas lc.
  legend(lc) {
    const ctx = lc.getContext('2d');
    for (let x = 0; x < lc.width; x++) {
      ctx.fillStyle = colour(x / (lc.width - 1));
      ctx.fillRect(x, 0, 1, lc.height);
    }
  }

  cell(ev) {
    const rect = this.canvas.getBoundingClientRect();
    const x = (ev.clientX - rect.left) * this.canvas.width / rect.width;
    const y = (ev.clientY - rect.top) * this.canvas.height / rect.height;
    const col = Math.floor(x / (this.canvas.width / Math.max(1, this.steps.length)));
    const row = Math.floor(y / this.rowH);
    if (row < 0 || row >= this.layers.length || col < 0 || col >= this.steps.length) return null;
    return { row, col };
  }

  hover(ev) {
    const c = this.cell(ev);
    const tip = this.tip;
    if (!c) { tip.hidden = true; return; }
    const v = this.rows[c.row][c.col];
    const layer = this.layers[c.row], step = this.steps[c.col];
    tip.hidden = false;
    tip.dataset.layer = layer;
    tip.dataset.step = String(step);
    tip.dataset.value = v === null || v === undefined ? '' : String(v);
    tip.textContent = `${layer} · step ${step} · ${this.metric} = ` +
      (v === null || v === undefined ? 'no EMA' : v.toPrecision(6));
    const box = this.canvas.parentElement.getBoundingClientRect();
    tip.style.left = (ev.clientX - box.left + 12) + 'px';
    tip.style.top = (ev.clientY - box.top + 12) + 'px';
  }
}
