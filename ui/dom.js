// dom: small helpers the views share to build the page (no inline script
// or style anywhere: the Content-Security-Policy is default-src 'self').

// h('td', {class: 'x', dataset: {value: 1}}, 'text', child...)
export function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k === 'on') for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (k === 'class') e.className = v;
    else if (k in e && typeof v !== 'string') e[k] = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// A number for a person: 4 significant digits, or '—' for none.
export function num(v, digits = 4) {
  if (v === null || v === undefined) return '—';
  if (typeof v !== 'number') return String(v);
  if (v === 0 || (Math.abs(v) >= 1e-3 && Math.abs(v) < 1e6)) return String(+v.toPrecision(digits));
  return v.toExponential(digits - 1);
}

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + ' ' + u[i];
}

// A <select> of options [[value, text]...] with value chosen.
export function select(id, options, chosen, onchange) {
  return h('select', { id, on: { change: onchange } },
    options.map(([v, t]) => h('option', { value: v, selected: v === chosen }, t)));
}

export function runHref(run, what, params) {
  let s = '#/run/' + encodeURIComponent(run) + (what ? '/' + what : '');
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {}))
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const qs = q.toString();
  return qs ? s + '?' + qs : s;
}
