// run: one run's drift (GET /v1/runs/{run}/drift): a heatmap of layers x
// steps for the chosen metric, EMA and reference, the overall metric as a
// line, and per layer the latest batch noise and normalization batch size
// (GET /v1/runs/{run}/stats). A click on a cell opens the channel view.
import { api } from './api.js';
import { h, num, runHref, select } from './dom.js';
import { Heatmap } from './heatmap.js';
import { plot } from './plot.js';

export const name = 'run';

const METRICS = ['kl', 'mean_err', 'var_err'];

// The view's choices, from the #fragment's parameters.
function choices(p, info, snaps) {
  const domains = info.domains.map((d) => d.name);
  const c = {
    metric: METRICS.includes(p.metric) ? p.metric : 'kl',
    domain: p.domain || (domains.includes('default') ? 'default' : domains[0] || 'default'),
    ema: p.ema === 'sim' ? 'sim' : 'worker',
    worker: p.worker || '',
    momentum: p.momentum || '0.1',
    ref: p.ref || 'window',
    window: p.window || 'auto',
  };
  if (c.ref.startsWith('snapshot:') && !snaps.some((s) => 'snapshot:' + s.label === c.ref))
    c.ref = 'window';
  return c;
}

// The /drift parameters of choices c (docs/API.md, "Drift").
export function driftParams(c, info, points) {
  const q = { domain: c.domain, ema: c.ema, points };
  if (c.ema === 'sim') q.momentum = c.momentum;
  else if (c.worker) q.worker = c.worker;
  if (c.ref === 'window') {
    q.window = c.window;
  } else {
    q.precise = c.ref;
    if (c.ref.startsWith('worker:') && c.ema === 'worker' && !c.worker) {
      const other = info.workers.map((w) => w.name).find((w) => 'worker:' + w !== c.ref);
      q.worker = other || c.ref.slice(7);
    }
  }
  return q;
}

export async function show(ctx) {
  const run = ctx.params.run;
  const width = Math.max(200, Math.min(1600, ctx.el.clientWidth - 240));
  // /drift does not wait for the run's summary when its parameters do not
  // depend on it (the domain given or default, no other worker to pick)
  const guess = choices(ctx.params, { domains: [{ name: ctx.params.domain || 'default' }], workers: [] },
    [{ label: (ctx.params.ref || '').replace(/^snapshot:/, '') }]);
  const early = guess.ref.startsWith('worker:') ? null
    : driftParams(guess, { workers: [] }, width);
  const earlyDrift = early ? api.drift(run, early) : null;
  if (earlyDrift) earlyDrift.catch(() => null); // used, or asked again below
  const [info, snapList] = await Promise.all([api.run(run), api.snapshots(run)]);
  const snaps = snapList.snapshots;
  const c = choices(ctx.params, info, snaps);
  const go = (change) => {
    const next = Object.assign({}, c, change);
    location.hash = runHref(run, '', next);
  };
  const workers = info.workers.map((w) => w.name);
  const refs = [['window', 'precise window']]
    .concat(snaps.map((s) => ['snapshot:' + s.label, 'snapshot ' + s.label]))
    .concat(workers.map((w) => ['worker:' + w, 'worker ' + w + "'s EMA"]));
  const winInput = h('input', { id: 'window', value: c.window, size: 5, disabled: c.ref !== 'window',
    on: { change: (ev) => go({ window: ev.target.value.trim() || 'auto' }) } });
  const momInput = h('input', { id: 'momentum', value: c.momentum, size: 6, disabled: c.ema !== 'sim',
    on: { change: (ev) => go({ momentum: ev.target.value.trim() || '0.1' }) } });
  const controls = h('form', { class: 'controls', on: { submit: (ev) => ev.preventDefault() } },
    h('label', {}, 'metric ', select('metric', METRICS.map((m) => [m, m]), c.metric,
      (ev) => go({ metric: ev.target.value }))),
    h('label', {}, 'domain ', select('domain', info.domains.map((d) => [d.name, d.name]), c.domain,
      (ev) => go({ domain: ev.target.value }))),
    h('label', {}, 'EMA ', select('ema', [['worker', "a worker's own"], ['sim', 'simulated']], c.ema,
      (ev) => go({ ema: ev.target.value }))),
    h('label', {}, 'worker ', select('worker', [['', 'first reporting']].concat(workers.map((w) => [w, w])),
      c.worker, (ev) => go({ worker: ev.target.value }))),
    h('label', {}, 'momentum ', momInput),
    h('label', {}, 'against ', select('ref', refs, c.ref, (ev) => go({ ref: ev.target.value }))),
    h('label', {}, 'window ', winInput));

  const canvas = h('canvas', { id: 'heatmap', width: 800, height: 10 });
  const tip = h('div', { id: 'heat-tip', class: 'tip', hidden: true });
  const labels = h('div', { id: 'heat-labels', class: 'heat-labels' });
  const legendCanvas = h('canvas', { id: 'heat-legend', width: 200, height: 10 });
  const legendText = h('span', { id: 'heat-scale', class: 'muted' });
  const overall = h('div', { id: 'overall-plot', class: 'plot' });
  const tbody = h('tbody');
  const layerTable = h('table', { id: 'layers-table' }, h('thead', {}, h('tr', {},
    ['layer', 'channels', 'latest ' + c.metric, 'batch noise', 'batch size (min / mean / max)',
      'batches in window'].map((t) => h('th', {}, t)))), tbody);
  const summary = h('p', { id: 'run-summary', class: 'muted' });
  ctx.el.append(h('h1', {}, 'Drift of ', run), summary, controls,
    h('p', { class: 'muted' }, 'Rows: layers in model order; columns: steps; colour: ', c.metric,
      ' of the EMA against the reference, log scale ', legendCanvas, ' ', legendText,
      '. Click a cell for the channel view.'),
    h('div', { class: 'heat' }, labels, h('div', { class: 'heat-cells' }, canvas, tip)),
    h('h2', {}, 'Overall ', c.metric, ' (mean over layers)'), overall,
    h('h2', {}, 'Layers'), layerTable);

  canvas.width = width;
  const map = new Heatmap(canvas, tip, (layer, step) => {
    location.hash = runHref(run, 'channel', { layer, step, channel: 0, domain: c.domain,
      worker: c.worker, window: c.window });
  });
  map.legend(legendCanvas);
  const order = info.layers.map((l) => l.name);
  const channels = Object.fromEntries(info.layers.map((l) => [l.name, l.channels]));
  let d = null; // the drift held: step[], layers{name: {metric: []}}, overall
  let graph = null;

  function render() {
    const layers = order.filter((l) => d.layers[l]);
    map.set(layers, d.step, layers.map((l) => d.layers[l][c.metric]), c.metric);
    legendText.textContent = num(map.scale[0]) + ' … ' + num(map.scale[1]);
    labels.replaceChildren(...layers.map((l) => {
      const e = h('div', { class: 'heat-label', title: l }, l);
      e.style.height = e.style.lineHeight = map.rowH + 'px';
      return e;
    }));
    const rows = d.step.map((s, i) => [s, d.overall[c.metric][i]]);
    if (!rows.length) return;
    if (graph) graph.updateOptions({ file: rows });
    else graph = plot(overall, rows, { labels: ['step', c.metric], height: 220,
      connectSeparatedPoints: false, logscale: true, axes: { y: { axisLabelWidth: 70 } } });
    summary.textContent = `steps ${info.steps ? info.steps.min + '–' + d.step[d.step.length - 1] : '—'},` +
      ` ${layers.length} layers, ${d.step.length} points of ${d.stride} step(s) each`;
    summary.dataset.lastStep = String(d.step[d.step.length - 1]);
  }

  async function loadStats() {
    const q = { domain: c.domain, window: c.window === 'auto' || /^\d+$/.test(c.window) ? c.window : 'auto' };
    const st = await api.stats(run, q).catch(() => null);
    if (!ctx.open()) return;
    const layers = order.filter((l) => d.layers[l]);
    tbody.replaceChildren(...layers.map((l) => {
      const vals = d.layers[l][c.metric];
      let last = null, lastStep = null;
      for (let i = vals.length - 1; i >= 0; i--) if (vals[i] !== null) { last = vals[i]; lastStep = d.step[i]; break; }
      const s = st && st.layers[l];
      return h('tr', { dataset: { layer: l } },
        h('td', {}, h('a', { href: runHref(run, 'channel', { layer: l, channel: 0, domain: c.domain }) }, l)),
        h('td', { class: 'n' }, channels[l]),
        h('td', { class: 'n', dataset: { field: 'latest', value: last === null ? '' : String(last),
          step: lastStep === null ? '' : String(lastStep) } }, num(last)),
        h('td', { class: 'n', dataset: { field: 'batch_noise', value: s && s.batch_noise !== null ? String(s.batch_noise) : '' } },
          s ? num(s.batch_noise) : '—'),
        h('td', { class: 'n', dataset: { field: 'batch_size', value: s ? String(s.batch_size.mean) : '' } },
          s ? `${s.batch_size.min} / ${num(s.batch_size.mean)} / ${s.batch_size.max}` : '—'),
        h('td', { class: 'n' }, s ? s.batches : '—'));
    }));
  }

  const params = driftParams(c, info, width);
  d = await (early && JSON.stringify(early) === JSON.stringify(params) ? earlyDrift
    : api.drift(run, params));
  if (!ctx.open()) return;
  render();
  // for tests/bench/bench_dashboard.py: the frame that paints the heatmap
  requestAnimationFrame(() => performance.mark('bnstat:heatmap'));
  await loadStats();
  ctx.ok();

  // live: the steps after the last one held, appended; all again when they
  // would pass twice the canvas' width
  ctx.every(async () => {
    const now = await api.summary(run);
    const last = d.step.length ? d.step[d.step.length - 1] : (info.steps ? info.steps.min - 1 : 0);
    if (!now || !now.steps || now.steps.max <= last) return;
    const q = driftParams(c, info, width);
    if (d.step.length < 2 * width) {
      q.from = last + 1;
      const more = await api.drift(run, q).catch((err) => { if (err.status === 404) return null; throw err; });
      if (!more || !ctx.open()) return;
      d.step = d.step.concat(more.step);
      for (const l of Object.keys(more.layers)) {
        if (!d.layers[l]) {
          d.layers[l] = {};
          for (const m of METRICS) d.layers[l][m] = new Array(d.step.length - more.step.length).fill(null);
        }
      }
      for (const l of Object.keys(d.layers))
        for (const m of METRICS)
          d.layers[l][m] = d.layers[l][m].concat(more.layers[l] ? more.layers[l][m] : new Array(more.step.length).fill(null));
      for (const m of METRICS) d.overall[m] = d.overall[m].concat(more.overall[m]);
      if (Object.keys(more.layers).some((l) => !order.includes(l))) {
        const full = await api.run(run); // a new layer: its place in the model's order
        info.layers = full.layers;
        order.splice(0, order.length, ...full.layers.map((x) => x.name));
        for (const x of full.layers) channels[x.name] = x.channels;
      }
    } else {
      d = await api.drift(run, q);
      if (!ctx.open()) return;
    }
    info.steps = now.steps;
    render();
    await loadStats();
  });
}
