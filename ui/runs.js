// runs: every run on the server, a page at a time, filtered by name prefix
// (GET /v1/runs with prefix, limit and after), refreshed while open; the
// storage of each listed run from GET /v1/runs/{run}.
import { api } from './api.js';
import { bytes, h, runHref } from './dom.js';

export const name = 'runs';

const LIMIT = 25;
const BYTES_MS = 60000;
const sizes = new Map(); // run -> {bytes, at}

export async function show(ctx) {
  const p = ctx.params;
  const prefix = p.prefix || '';
  const after = p.after || '';
  const input = h('input', { id: 'runs-prefix', type: 'search', value: prefix,
    placeholder: 'name prefix' });
  const form = h('form', { class: 'controls', on: { submit: (ev) => {
    ev.preventDefault();
    location.hash = '#/?' + new URLSearchParams({ prefix: input.value }).toString();
  } } }, h('label', {}, 'Runs starting with ', input), ' ', h('button', {}, 'Filter'));
  const body = h('tbody');
  const table = h('table', { id: 'runs-table' },
    h('thead', {}, h('tr', {}, ['run', 'last step', 'workers', 'layers', 'domains', 'batches',
      'created', 'bytes'].map((t) => h('th', {}, t)))), body);
  const pager = h('p', { class: 'pager' });
  ctx.el.append(h('h1', {}, 'Runs'), form, table, pager);

  async function load() {
    const page = await api.runs({ prefix, after, limit: LIMIT });
    if (!ctx.open()) return;
    body.replaceChildren(...page.runs.map((r) => h('tr', { dataset: { run: r.name } },
      h('td', {}, h('a', { href: runHref(r.name) }, r.name)),
      h('td', { class: 'n', dataset: { field: 'last_step' } }, r.steps ? r.steps.max : '—'),
      h('td', { class: 'n' }, r.workers), h('td', { class: 'n' }, r.layers),
      h('td', { class: 'n' }, r.domains), h('td', { class: 'n' }, r.batches),
      h('td', {}, new Date(r.created_ms).toISOString().replace('T', ' ').slice(0, 19)),
      h('td', { class: 'n', dataset: { field: 'bytes' } }, '…'))));
    if (!page.runs.length)
      body.append(h('tr', {}, h('td', { colspan: 8, class: 'muted' },
        prefix || after ? 'No run on this page.' : 'No run yet: train with the reporter ' +
        '(clients/python/examples/train_and_precise_bn.py) and it appears here.')));
    pager.replaceChildren(
      after ? h('a', { href: '#/?' + new URLSearchParams({ prefix }).toString() }, '« first page') : '',
      ' ',
      page.next ? h('a', { id: 'runs-next', href: '#/?' +
        new URLSearchParams({ prefix, after: page.next }).toString() }, 'next page »') : '');
    // the storage of each run is in its own summary, which sums it (seconds
    // for a long run): asked once per run and BYTES_MS, not at every refresh
    const now = Date.now();
    await Promise.all(page.runs.map(async (r) => {
      let b = sizes.get(r.name);
      if (!b || now - b.at > BYTES_MS) {
        const one = await api.run(r.name).catch(() => null);
        if (one) sizes.set(r.name, b = { bytes: one.bytes, at: now });
      }
      const td = body.querySelector(`tr[data-run="${CSS.escape(r.name)}"] td[data-field="bytes"]`);
      if (b && td) { td.textContent = bytes(b.bytes); td.dataset.value = b.bytes; }
    }));
    ctx.ok();
  }
  await load();
  ctx.every(load);
}
