// app: the dashboard's frame: which view the location's #fragment names,
// the token form, the error line and the timers that keep an open view
// following a run as it trains (docs/API.md, "Dashboard").
import { ApiError, explain, setToken, token } from './api.js';
import { h } from './dom.js';
import * as runs from './runs.js';
import * as run from './run.js';
import * as channel from './channel.js';
import * as domains from './domains.js';
import * as snapshots from './snapshots.js';

// How often an open view asks for what is new, in ms.
const POLL_MS = 2000;

const routes = [
  [/^#\/run\/([^/?]+)\/channel$/, channel],
  [/^#\/run\/([^/?]+)\/domains$/, domains],
  [/^#\/run\/([^/?]+)\/snapshots$/, snapshots],
  [/^#\/run\/([^/?]+)$/, run],
  [/^#?\/?$/, runs],
];

let current = null; // { token, timer }
let generation = 0;

const $ = (id) => document.getElementById(id);

function showError(err) {
  const box = $('error');
  if (!err) { box.hidden = true; box.textContent = ''; return; }
  box.hidden = false;
  box.textContent = explain(err);
  box.dataset.status = err instanceof ApiError ? String(err.status) : '';
  if (err instanceof ApiError && (err.status === 401 || err.status === 403) &&
      !/loopback/.test(err.message)) {
    $('token-why').textContent = explain(err);
    $('token-box').hidden = false;
    $('token-input').focus();
  }
}

function nav(name) {
  const n = $('nav');
  n.replaceChildren();
  if (!name) return;
  const r = encodeURIComponent(name);
  for (const [what, text] of [['', 'drift'], ['channel', 'channel'], ['domains', 'domains'],
    ['snapshots', 'snapshots']])
    n.append(h('a', { href: '#/run/' + r + (what ? '/' + what : '') }, text), ' ');
  n.prepend(h('span', { class: 'run-name' }, name), ' ');
}

// The context a view gets: where to draw, its parameters, and how to fail,
// follow a run (every(fn): fn is called every POLL_MS while the view is
// open) and know that it is still the open one.
function context(params, gen) {
  return {
    el: $('view'),
    params,
    open: () => gen === generation,
    fail: (err) => { if (gen === generation) showError(err); },
    ok: () => { if (gen === generation && !$('error').hidden) showError(null); },
    every: (fn) => {
      const tick = async () => {
        if (gen !== generation) return;
        try { await fn(); } catch (err) { showError(err); }
        if (gen === generation) current.timer = setTimeout(tick, POLL_MS);
      };
      current.timer = setTimeout(tick, POLL_MS);
      $('live').textContent = 'following';
    },
  };
}

async function route() {
  if (current && current.timer) clearTimeout(current.timer);
  const gen = ++generation;
  performance.mark('bnstat:view');
  current = { timer: null };
  showError(null);
  $('live').textContent = '';
  const hash = location.hash || '#/';
  const [path, query] = hash.split('?');
  const params = Object.fromEntries(new URLSearchParams(query || ''));
  for (const [re, view] of routes) {
    const m = re.exec(path);
    if (!m) continue;
    if (m[1]) params.run = decodeURIComponent(m[1]);
    nav(params.run);
    document.body.dataset.view = view.name;
    $('view').replaceChildren();
    try {
      await view.show(context(params, gen));
      if (gen === generation) document.body.dataset.ready = String(gen);
    } catch (err) {
      if (gen === generation) { showError(err); document.body.dataset.ready = String(gen); }
    }
    return;
  }
  nav(null);
  $('view').replaceChildren(h('p', {}, 'No such view: ', hash));
}

function init() {
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    setToken($('token-input').value.trim());
    $('token-input').value = '';
    $('token-box').hidden = true;
    $('token-forget').hidden = !token();
    route();
  });
  $('token-forget').hidden = !token();
  $('token-forget').addEventListener('click', () => {
    setToken('');
    $('token-forget').hidden = true;
    route();
  });
  window.addEventListener('hashchange', route);
  route();
}

init();
