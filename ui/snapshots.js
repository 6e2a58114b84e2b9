// snapshots: a run's frozen population statistics (GET
// /v1/runs/{run}/snapshots), each downloadable as JSON or safetensors (the
// download is fetched with the token, then saved), and a form to create
// one (POST, role admin).
import { api, explain } from './api.js';
import { h } from './dom.js';

export const name = 'snapshots';

async function download(run, label, safetensors) {
  const blob = await api.snapshot(run, label, safetensors ? { format: 'safetensors' } : {}, true);
  const a = h('a', { href: URL.createObjectURL(blob),
    download: `${run}-${label}.${safetensors ? 'safetensors' : 'json'}` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

export async function show(ctx) {
  const run = ctx.params.run;
  const list = await api.snapshots(run);
  const status = h('p', { id: 'snapshot-status', role: 'status' });
  const rows = list.snapshots.map((s) => h('tr', { dataset: { label: s.label } },
    h('td', {}, s.label), h('td', { class: 'n' }, s.step), h('td', { class: 'n' }, s.window),
    h('td', {}, String(s.requested_window)), h('td', {}, s.domain), h('td', {}, s.estimator),
    h('td', {}, s.created),
    h('td', {}, h('button', { type: 'button', class: 'dl-json', on: { click: () =>
      download(run, s.label, false).catch((e) => { status.textContent = explain(e); }) } }, 'JSON'), ' ',
    h('button', { type: 'button', class: 'dl-st', on: { click: () =>
      download(run, s.label, true).catch((e) => { status.textContent = explain(e); }) } }, 'safetensors'))));
  const field = (id, label, attrs) => h('label', {}, label, ' ', h('input', Object.assign({ id }, attrs)));
  const form = h('form', { id: 'snapshot-form', class: 'controls', on: { submit: async (ev) => {
    ev.preventDefault();
    const doc = { label: form.querySelector('#snap-label').value.trim() };
    const step = form.querySelector('#snap-step').value.trim();
    const win = form.querySelector('#snap-window').value.trim();
    const dom = form.querySelector('#snap-domain').value.trim();
    if (step) doc.step = Number(step);
    if (win) doc.window = win === 'auto' ? 'auto' : Number(win);
    if (dom) doc.domain = dom;
    try {
      const s = await api.createSnapshot(run, doc);
      status.textContent = `Snapshot ${s.label} of steps ${s.step - s.window + 1}–${s.step} stored.`;
      status.dataset.created = s.label;
      setTimeout(() => { if (ctx.open()) location.hash = location.hash.split('?')[0] + '?r=' + Date.now(); }, 300);
    } catch (e) {
      status.textContent = explain(e);
      status.dataset.status = String(e.status || '');
    }
  } } },
  field('snap-label', 'label', { required: true, size: 12, pattern: '[A-Za-z0-9._\\-]{1,128}' }),
  field('snap-step', 'step (latest)', { size: 7 }), field('snap-window', 'window', { size: 5, value: 'auto' }),
  field('snap-domain', 'domain', { size: 10, value: 'default' }),
  h('button', { id: 'snap-create' }, 'Create (admin token)'));
  ctx.el.append(h('h1', {}, 'Snapshots of ', run),
    h('table', { id: 'snapshots-table' }, h('thead', {}, h('tr', {},
      ['label', 'step', 'window', 'asked', 'domain', 'estimator', 'created', 'download']
        .map((t) => h('th', {}, t)))), h('tbody', {}, rows.length ? rows
      : h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No snapshot yet.')))),
    h('h2', {}, 'Freeze the precise statistics'), form, status);
  ctx.ok();
}
