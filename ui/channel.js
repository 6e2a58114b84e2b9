// channel: the paper's Figure 1 for one layer and channel (GET
// /v1/runs/{run}/series): the batch mean, a worker's EMA, the simulated
// EMA at each chosen momentum and the precise mean over the chosen window,
// over steps; the same for the variance. Zoom (drag) and pan (shift-drag)
// work on the points held; where the held points merge several steps, the
// range zoomed into is fetched at full detail once and kept.
import { api } from './api.js';
import { h, runHref, select } from './dom.js';
import { plot } from './plot.js';

export const name = 'channel';

// points asked for the whole run (and for each range zoomed into); #...&points=N
const POINTS = 1000;
const SIM_COLOURS = ['#1f77b4', '#17becf', '#9467bd', '#8c564b'];

export async function show(ctx) {
  const run = ctx.params.run;
  const info = await api.run(run);
  const p = ctx.params;
  const layers = info.layers.map((l) => l.name);
  const c = {
    layer: layers.includes(p.layer) ? p.layer : layers[0],
    channel: p.channel || '0',
    domain: p.domain || 'default',
    worker: p.worker || '',
    window: p.window || 'auto',
    momenta: p.momenta || '0.1,0.01',
    points: /^[1-9][0-9]*$/.test(p.points || '') ? p.points : String(POINTS),
  };
  const go = (change) => { location.hash = runHref(run, 'channel', Object.assign({}, c, change)); };
  const momenta = c.momenta.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const nch = (info.layers.find((l) => l.name === c.layer) || { channels: 1 }).channels;
  const input = (id, value, size, key) => h('input', { id, value, size,
    on: { change: (ev) => go({ [key]: ev.target.value.trim() }) } });
  ctx.el.append(h('h1', {}, 'Channel ', c.channel, ' of ', c.layer, ' in ', run),
    h('form', { class: 'controls', on: { submit: (ev) => ev.preventDefault() } },
      h('label', {}, 'layer ', select('layer', layers.map((l) => [l, l]), c.layer, (ev) => go({ layer: ev.target.value }))),
      h('label', {}, `channel (0–${nch - 1}) `, input('channel', c.channel, 4, 'channel')),
      h('label', {}, 'domain ', select('domain', info.domains.map((d) => [d.name, d.name]), c.domain,
        (ev) => go({ domain: ev.target.value }))),
      h('label', {}, 'worker ', select('worker', [['', 'first reporting']].concat(info.workers.map((w) => [w.name, w.name])),
        c.worker, (ev) => go({ worker: ev.target.value }))),
      h('label', {}, 'simulated momenta ', input('momenta', c.momenta, 12, 'momenta')),
      h('label', {}, 'precise window ', input('window', c.window, 5, 'window'))),
    h('p', { class: 'muted' }, 'Drag to zoom, shift-drag to pan, double-click to see the whole run.' +
      (p.step ? ` Opened at step ${p.step}.` : '')),
    h('h2', {}, 'Mean'), h('div', { id: 'mean-plot', class: 'plot' }),
    h('h2', {}, 'Variance'), h('div', { id: 'var-plot', class: 'plot' }),
    h('p', { id: 'series-info', class: 'muted' }));

  const base = { layer: c.layer, channel: c.channel, domain: c.domain, window: c.window,
    worker: c.worker };
  // rows of [step, batch, ema, sim@m..., precise] for the mean and for the variance
  async function fetchRange(from, to, points) {
    const replies = await Promise.all(momenta.map((m) =>
      api.series(run, Object.assign({}, base, { momentum: m, from, to, points }))));
    const a = replies[0];
    const mean = a.step.map((s, i) => [s, a.batch_mean[i], a.ema_mean[i]]
      .concat(replies.map((r) => r.sim_mean[i]), [a.precise_mean[i]]));
    const vari = a.step.map((s, i) => [s, a.batch_var[i], a.ema_var[i]]
      .concat(replies.map((r) => r.sim_var[i]), [a.precise_var[i]]));
    return { mean, vari, stride: a.stride };
  }
  const names = ['step', 'batch', 'worker EMA'].concat(momenta.map((m) => 'simulated EMA ' + m),
    ['precise (window ' + c.window + ')']);
  const held = await fetchRange(undefined, undefined, c.points);
  if (!ctx.open()) return;
  const detailed = []; // [from, to] ranges held at full detail
  let syncing = false;
  const graphs = {};
  const zoomed = async (minX, maxX, g) => {
    if (syncing) return;
    syncing = true;
    for (const o of Object.values(graphs)) if (o !== g) o.updateOptions({ dateWindow: g.xAxisRange() });
    syncing = false;
    if (held.stride <= 1 || g.isZoomed() === false) return;
    const from = Math.ceil(minX), to = Math.floor(maxX);
    if (detailed.some(([a, b]) => a <= from && to <= b)) return;
    const more = await fetchRange(from, to, c.points);
    if (!ctx.open() || !more.mean.length) return;
    detailed.push([more.mean[0][0], more.mean[more.mean.length - 1][0]]);
    const splice = (rows, add) => rows.filter((r) => r[0] < add[0][0] || r[0] > add[add.length - 1][0])
      .concat(add).sort((x, y) => x[0] - y[0]);
    held.mean = splice(held.mean, more.mean);
    held.vari = splice(held.vari, more.vari);
    graphs.mean.updateOptions({ file: held.mean });
    graphs.vari.updateOptions({ file: held.vari });
  };
  const opts = (ylabel) => ({ labels: names, height: 300, ylabel, axes: { y: { axisLabelWidth: 60 } },
    connectSeparatedPoints: true, zoomCallback: null, drawPoints: false,
    colors: ['#999999', '#d62728'].concat(momenta.map((_, i) => SIM_COLOURS[i % SIM_COLOURS.length]),
      ['#2ca02c']) });
  graphs.mean = plot(document.getElementById('mean-plot'), held.mean, opts('mean'));
  graphs.vari = plot(document.getElementById('var-plot'), held.vari, opts('variance'));
  // called after a zoom and after a pan
  for (const g of Object.values(graphs)) g.updateOptions({ zoomCallback: (a, b) => zoomed(a, b, g) });
  // for whoever reads the page's values (the tests): the graphs' own data
  window.bnstatGraphs = graphs;
  const infoLine = () => {
    const n = held.mean.length;
    const el = document.getElementById('series-info');
    el.textContent = `${n} points, each merging ${held.stride} step(s)` +
      (n ? `, steps ${held.mean[0][0]}–${held.mean[n - 1][0]}` : '');
    el.dataset.points = String(n);
    el.dataset.lastStep = n ? String(held.mean[n - 1][0]) : '';
  };
  infoLine();
  ctx.ok();

  ctx.every(async () => {
    const last = held.mean.length ? held.mean[held.mean.length - 1][0] : 0;
    const now = await api.summary(run);
    if (!now || !now.steps || now.steps.max <= last) return;
    const more = await fetchRange(last + 1, undefined, c.points).catch((err) => {
      if (err.status === 404) return null;
      throw err;
    });
    if (!more || !ctx.open() || !more.mean.length) return;
    held.mean = held.mean.concat(more.mean);
    held.vari = held.vari.concat(more.vari);
    graphs.mean.updateOptions({ file: held.mean });
    graphs.vari.updateOptions({ file: held.vari });
    infoLine();
  });
}
