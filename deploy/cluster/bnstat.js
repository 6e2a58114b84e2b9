// bnstat.js: the front's one request that spans runs, GET /v1/runs, for
// nginx's scripting module (njs). It asks every node for the same page
// (prefix, limit, after, and the client's Authorization with it: each node
// checks the token), merges the runs by name as one node sorts them (byte
// order; run names are ASCII), keeps the first `limit`, and names the nodes
// that did not answer in "unavailable" (docs/OPERATIONS.md, "A cluster").
// The nodes are the upstreams bnstat_node_1 .. bnstat_node_N, reached
// through the internal location /_node/K/; N is $bnstat_nodes.

function error(r, status, code, message) {
    r.headersOut['Content-Type'] = 'application/json';
    if (status === 503)
        r.headersOut['Retry-After'] = '5';
    r.return(status, JSON.stringify({error: {status: status, code: code,
                                             message: message, path: ''}}));
}

function runs(r) {
    var n = parseInt(r.variables.bnstat_nodes, 10);
    var args = r.variables.args || '';
    var asks = [];
    var k;

    if (r.method !== 'GET') {
        r.headersOut['Allow'] = 'GET';
        error(r, 405, 'method_not_allowed', r.method + ' is not allowed here; use GET');
        return;
    }
    for (k = 1; k <= n; k++)
        asks.push(r.subrequest('/_node/' + k + '/v1/runs', {args: args, method: 'GET'})
                  .then(function (reply) { return reply; },
                        function () { return null; }));
    Promise.all(asks).then(function (replies) {
        var all = [], unavailable = [], more = false, refusal = null;
        var limit = 1000, i, doc, out;

        if (r.args.limit !== undefined && /^[0-9]+$/.test(r.args.limit))
            limit = parseInt(r.args.limit, 10);
        for (i = 0; i < replies.length; i++) {
            var reply = replies[i];

            if (reply === null || reply.status === 0 || reply.status >= 500) {
                unavailable.push('node-' + (i + 1));
                continue;
            }
            try {
                doc = JSON.parse(reply.responseText);
            } catch (e) {
                unavailable.push('node-' + (i + 1));
                continue;
            }
            if (reply.status !== 200) {
                // the node refused the request itself (a parameter, a token): so would all
                if (refusal === null)
                    refusal = {status: reply.status, text: reply.responseText,
                               auth: reply.headersOut['WWW-Authenticate']};
                continue;
            }
            all = all.concat(doc.runs);
            if (doc.next !== undefined)
                more = true;
        }
        if (refusal !== null) {
            r.headersOut['Content-Type'] = 'application/json';
            if (refusal.auth !== undefined)
                r.headersOut['WWW-Authenticate'] = refusal.auth;
            r.return(refusal.status, refusal.text);
            return;
        }
        if (unavailable.length === n) {
            error(r, 503, 'unavailable', 'no node of the cluster answers; retry later');
            return;
        }
        all.sort(function (a, b) { return a.name < b.name ? -1 : a.name > b.name ? 1 : 0; });
        out = {runs: all.slice(0, limit)};
        if (all.length > limit || (more && all.length === limit))
            out.next = out.runs[out.runs.length - 1].name;
        if (unavailable.length > 0)
            out.unavailable = unavailable;
        r.headersOut['Content-Type'] = 'application/json';
        r.return(200, JSON.stringify(out));
    });
}

export default {runs};
