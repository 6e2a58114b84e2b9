// api: every call the page makes to bnstatd's API (docs/API.md), with the
// token of this tab, and the words that explain a refusal.
const KEY = 'bnstat.token';

export function token() {
  return sessionStorage.getItem(KEY) || '';
}

export function setToken(t) {
  if (t) sessionStorage.setItem(KEY, t);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, code, message, path) {
    super(message || ('HTTP ' + status));
    this.status = status;
    this.code = code || '';
    this.path = path || '';
  }
}

// The URL of path with params (an array value repeats the parameter;
// undefined, null and '' are left out).
export function url(path, params) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === '') continue;
    for (const x of Array.isArray(v) ? v : [v]) u.searchParams.append(k, String(x));
  }
  return u.pathname + u.search;
}

function runPath(run, what) {
  return '/v1/runs/' + encodeURIComponent(run) + (what ? '/' + what : '');
}

// GET (or opts.method) path?params; the JSON reply, or opts.blob: a Blob.
export async function call(path, params, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  const t = token();
  if (t) headers['Authorization'] = 'Bearer ' + t;
  let body;
  if (opts.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.json);
  }
  const r = await fetch(url(path, params), {
    method: opts.method || 'GET', headers, body, cache: 'no-store',
  });
  if (!r.ok) {
    let e = {};
    try { e = (await r.json()).error || {}; } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, e.code, e.message, e.path);
  }
  return opts.blob ? r.blob() : r.json();
}

export const api = {
  runs: (p) => call('/v1/runs', p),
  run: (run) => call(runPath(run)),
  // the run's line of GET /v1/runs (steps, counts; no layers, no bytes):
  // what a view polls, since GET /v1/runs/{run} also sums the run's storage
  summary: async (run) => {
    const page = await call('/v1/runs', { prefix: run, limit: 1 });
    const r = page.runs[0];
    return r && r.name === run ? r : null;
  },
  drift: (run, p) => call(runPath(run, 'drift'), p),
  stats: (run, p) => call(runPath(run, 'stats'), p),
  series: (run, p) => call(runPath(run, 'series'), p),
  domains: (run) => call(runPath(run, 'domains')),
  shift: (run, p) => call(runPath(run, 'shift'), p),
  snapshots: (run) => call(runPath(run, 'snapshots')),
  snapshot: (run, label, p, blob) =>
    call(runPath(run, 'snapshots/' + encodeURIComponent(label)), p, { blob: !!blob }),
  createSnapshot: (run, doc) => call(runPath(run, 'snapshots'), null, { method: 'POST', json: doc }),
};

// A refusal in words, for a person.
export function explain(err) {
  if (!(err instanceof ApiError)) return 'The server could not be reached: ' + err.message;
  switch (err.status) {
    case 401:
      return 'This server asks for a token (401): ' +
        (token() ? 'the token given is unknown to it. ' : 'none was given. ') +
        'Enter a token with the read role (admin to create snapshots).';
    case 403:
      if (/loopback/.test(err.message))
        return 'This server has no token file and answers only clients on its own ' +
          'machine (403): open the page from 127.0.0.1, or give the server a token file.';
      return 'The token is known but may not do this (403): ' + err.message +
        '. Enter a token with that role.';
    default:
      return 'The server refused (' + err.status + (err.code ? ' ' + err.code : '') + '): ' +
        err.message;
  }
}
