// domains: a run's domains with their counts (GET /v1/runs/{run}/domains)
// and the shift between two of them per layer (GET /v1/runs/{run}/shift).
import { api } from './api.js';
import { h, num, runHref, select } from './dom.js';

export const name = 'domains';

export async function show(ctx) {
  const run = ctx.params.run;
  const [doms, info] = await Promise.all([api.domains(run), api.run(run)]);
  const names = doms.domains.map((d) => d.name);
  const source = names.includes(ctx.params.source) ? ctx.params.source : names[0];
  const target = names.includes(ctx.params.target) ? ctx.params.target
    : names.find((n) => n !== source) || source;
  const win = ctx.params.window || 'auto';
  const step = ctx.params.step || '';
  const go = (change) => {
    location.hash = runHref(run, 'domains', Object.assign({ source, target, window: win, step }, change));
  };
  const counts = h('table', { id: 'domains-table' }, h('thead', {}, h('tr', {},
    ['domain', 'layers', 'steps', 'batches', 'elements per channel'].map((t) => h('th', {}, t)))),
  h('tbody', {}, doms.domains.map((d) => h('tr', { dataset: { domain: d.name } },
    h('td', {}, d.name), h('td', { class: 'n' }, d.layers), h('td', { class: 'n' }, d.steps),
    h('td', { class: 'n', dataset: { field: 'batches', value: String(d.batches) } }, d.batches),
    h('td', { class: 'n' }, d.elements)))));
  ctx.el.append(h('h1', {}, 'Domains of ', run), counts);
  if (names.length < 2) {
    ctx.el.append(h('p', { id: 'shift-none', class: 'muted' },
      'One domain only: upload batches with another "domain" to see the shift between them.'));
    return;
  }
  ctx.el.append(h('h2', {}, 'Shift between two domains'),
    h('form', { class: 'controls', on: { submit: (ev) => ev.preventDefault() } },
      h('label', {}, 'source (estimate) ', select('source', names.map((n) => [n, n]), source,
        (ev) => go({ source: ev.target.value }))),
      h('label', {}, 'target (reference) ', select('target', names.map((n) => [n, n]), target,
        (ev) => go({ target: ev.target.value }))),
      h('label', {}, 'step ', h('input', { id: 'shift-step', value: step, size: 7, placeholder: 'latest',
        on: { change: (ev) => go({ step: ev.target.value.trim() }) } })),
      h('label', {}, 'window ', h('input', { id: 'shift-window', value: win, size: 5,
        on: { change: (ev) => go({ window: ev.target.value.trim() || 'auto' }) } }))));
  // the step defaults to the lower of the two domains' latest: both need data in the window
  const sh = await api.shift(run, { source, target, window: win, step });
  if (!ctx.open()) return;
  const order = info.layers.map((l) => l.name).filter((l) => sh.layers[l]);
  const cols = ['mean_err', 'var_err', 'kl'];
  ctx.el.append(h('p', { class: 'muted' }, `At step ${sh.step}, window ${sh.window}.`),
    h('table', { id: 'shift-table' }, h('thead', {}, h('tr', {}, h('th', {}, 'layer'),
      cols.map((t) => h('th', {}, t)))),
    h('tbody', {}, order.map((l) => h('tr', { dataset: { layer: l } }, h('td', {}, l),
      cols.map((m) => h('td', { class: 'n', dataset: { field: m, value: String(sh.layers[l][m]) } },
        num(sh.layers[l][m]))))),
    h('tr', { class: 'overall' }, h('td', {}, 'overall'),
      cols.map((m) => h('td', { class: 'n' }, num(sh.overall[m])))))));
  ctx.ok();
}
