// shunt dashboard: polls /status, /calls and /readyz every 2 s and renders them.
//
// No framework, no external assets. Every value that comes from a request
// (paths, hosts, client addresses, errors) is inserted as text
// (createTextNode / textContent / title), never parsed as HTML.
'use strict';

(function () {
  const REFRESH_MS = 2000;
  const HISTORY_MS = 2 * 60 * 1000;
  const UPGRADES_WINDOW_MS = 60 * 1000;
  const CERT_WARN_DAYS = 14;
  const CALLS_LIMIT = 500;

  const state = {
    sort: { key: 'default', dir: 1 },
    history: new Map(), // call id -> [{t, up, down, rtt}]
    upgradeSamples: [], // {t, counts}
    calls: null, // last /calls body, or null when unavailable
    callsStatus: 0,
  };

  // ---- DOM helpers: text only ------------------------------------------

  function append(parent, child) {
    if (child === null || child === undefined || child === false) return;
    if (child instanceof Node) parent.appendChild(child);
    else parent.appendChild(document.createTextNode(String(child)));
  }

  function el(tag, cls, ...children) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    for (const c of children) append(e, c);
    return e;
  }

  function td(label, cls, ...children) {
    const c = el('td', cls, ...children);
    c.setAttribute('data-label', label);
    return c;
  }

  function titled(node, title) {
    if (title !== null && title !== undefined) node.title = String(title);
    return node;
  }

  function setRows(id, rows, cols, emptyText) {
    const body = document.querySelector('#' + id + ' tbody');
    if (rows.length === 0) {
      const c = el('td', 'empty muted', emptyText);
      c.colSpan = cols;
      body.replaceChildren(el('tr', null, c));
    } else {
      body.replaceChildren(...rows);
    }
  }

  function byId(id) {
    return document.getElementById(id);
  }

  // ---- formatting --------------------------------------------------------

  function isNum(x) {
    return typeof x === 'number' && isFinite(x);
  }

  function duration(s) {
    if (!isNum(s)) return '—';
    if (s < 1) return Math.round(s * 1000) + ' ms';
    if (s < 60) return s.toFixed(1) + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + Math.floor(s % 60) + 's';
    const h = Math.floor(m / 60);
    if (h < 48) return h + 'h ' + (m % 60) + 'm';
    return Math.floor(h / 24) + 'd ' + (h % 24) + 'h';
  }

  function ago(rfc3339) {
    const t = Date.parse(rfc3339);
    if (!isFinite(t)) return '—';
    return duration(Math.max(0, (Date.now() - t) / 1000)) + ' ago';
  }

  function rate(x) {
    return isNum(x) ? x.toFixed(1) : '—';
  }

  function ms(x) {
    if (!isNum(x)) return '—';
    return (x < 10 ? x.toFixed(1) : String(Math.round(x))) + ' ms';
  }

  function routeLabel(r) {
    return (r.host || '') + (r.path || '');
  }

  function upstreamBadge(name) {
    if (name === null || name === undefined) return el('span', 'badge bad', 'none');
    if (name === 'direct') return titled(el('span', 'badge direct', 'direct'), 'straight to the backend');
    return titled(el('span', 'badge via', 'via ' + name), 'through upstream ' + name);
  }

  function nameBadge(name) {
    return el('span', name === 'direct' ? 'badge direct' : 'badge via', name);
  }

  function healthBadge(health) {
    const cls = health === 'up' ? 'badge ok' : health === 'down' ? 'badge bad' : 'badge';
    return el('span', cls, health || 'unknown');
  }

  // ---- fetching -----------------------------------------------------------

  async function get(path) {
    try {
      const r = await fetch(path, { cache: 'no-store', headers: { Accept: 'application/json' } });
      const text = await r.text();
      let body = null;
      try {
        body = JSON.parse(text);
      } catch (_) {
        body = null;
      }
      return { status: r.status, body: body, text: text };
    } catch (e) {
      return { status: 0, body: null, error: String(e) };
    }
  }

  // ---- header and readiness ------------------------------------------------

  function renderHeader(status, ready) {
    byId('version').textContent = status ? 'v' + status.version + ' · up ' + duration(status.uptime_secs) : '';
    const badge = byId('ready');
    const ok = ready.status === 200 && ready.body && ready.body.ready === true;
    badge.className = 'badge ' + (ok ? 'ok' : 'bad');
    badge.textContent = ok ? 'ready' : ready.status === 0 ? 'unreachable' : 'not ready';
    const why = byId('readiness');
    const degraded = ok && Array.isArray(ready.body.degraded) ? ready.body.degraded : [];
    if (ok && degraded.length > 0) {
      // Ready, but a route runs on its fallback or has lost one: say which and why.
      badge.className = 'badge warn';
      badge.textContent = 'degraded';
      why.textContent =
        'Ready, degraded: ' +
        degraded.map((d) => d.route + (d.upstream ? ' (' + d.upstream + ')' : '') + ': ' + d.reason).join('; ');
      why.className = 'note warn';
    } else if (ok) {
      why.textContent = 'Ready: every route has a healthy upstream.';
      why.className = 'note ok';
    } else if (ready.body && ready.body.reason) {
      why.textContent = 'Not ready: ' + ready.body.reason;
      why.className = 'note bad';
    } else if (ready.body && Array.isArray(ready.body.routes)) {
      why.textContent = 'Not ready: ' + ready.body.routes.map((r) => r.route + ': ' + r.reason).join('; ');
      why.className = 'note bad';
    } else {
      why.textContent = 'Readiness unknown (/readyz answered ' + ready.status + ').';
      why.className = 'note bad';
    }
    byId('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  }

  function renderFetchError(message) {
    const e = byId('fetch-error');
    e.hidden = !message;
    e.textContent = message || '';
    document.body.classList.toggle('stale', !!message);
  }

  // ---- routes and upstreams -----------------------------------------------

  function renderRoutes(status, ready) {
    const health = new Map((status.upstreams || []).map((u) => [u.name, u.health]));
    const unready = new Map();
    if (ready.body && Array.isArray(ready.body.routes)) {
      for (const r of ready.body.routes) unready.set(r.route, r.reason);
    }
    const rows = (status.routes || []).map((r) => {
      const label = routeLabel(r);
      const via = r.via || [];
      const chain = el('span', 'chain');
      via.forEach((name, i) => {
        if (i > 0) append(chain, el('span', 'sep', '→'));
        const b = nameBadge(name);
        append(chain, titled(el('span', null, b, ' ', healthBadge(health.get(name))), 'health: ' + health.get(name)));
      });
      const using = el('span', 'chain', upstreamBadge(r.selected), ' ');
      if (r.selected && via.length > 0 && r.selected !== via[0]) append(using, el('span', 'badge warn', 'fallback'));
      const reason = unready.get(label);
      const readyCell = reason ? el('span', 'bad err', reason) : el('span', 'badge ok', 'ok');
      const row = el('tr', null, td('Route', null, label), td('Upstreams', null, chain), td('Using now', 'using', using), td('Ready', null, readyCell));
      row.setAttribute('data-route', label);
      return row;
    });
    setRows('routes', rows, 4, 'No routes.');
  }

  function renderUpstreams(status) {
    const rows = (status.upstreams || []).map((u) => {
      const row = el(
        'tr',
        null,
        td('Name', null, nameBadge(u.name)),
        td('URL', 'err', u.url),
        td('Check', null, u.check),
        td('Health', 'health', healthBadge(u.health)),
        td('Since', 'num', titled(el('span', null, ago(u.last_change)), u.last_change)),
        td('Last error', 'err bad', u.last_error || '')
      );
      row.setAttribute('data-upstream', u.name);
      return row;
    });
    setRows('upstreams', rows, 6, 'No upstreams.');
  }

  // ---- live calls -----------------------------------------------------------

  function dir(call, name) {
    return (call.directions && call.directions[name]) || {};
  }

  function leg(call, name) {
    return (call.legs && call.legs[name]) || {};
  }

  function stalled(call) {
    return !!(dir(call, 'to_backend').stalled || dir(call, 'to_client').stalled);
  }

  function stalls(call) {
    return (dir(call, 'to_backend').stalls || 0) + (dir(call, 'to_client').stalls || 0);
  }

  function rttOf(call, name) {
    const l = leg(call, name || 'client');
    return isNum(l.rtt_median_ms) ? l.rtt_median_ms : isNum(l.rtt_last_ms) ? l.rtt_last_ms : null;
  }

  // A leg's RTT, or why there is none: a leg that never falls silent for the
  // ping interval is not pinged ("streaming": its frames show it alive).
  function rttText(call, name) {
    const x = rttOf(call, name);
    if (isNum(x)) return ms(x);
    const status = leg(call, name || 'client').rtt_status;
    return status === 'streaming' ? 'streaming' : status === 'off' ? 'off' : '—';
  }

  function maxOf(a, b) {
    if (!isNum(a)) return isNum(b) ? b : null;
    if (!isNum(b)) return a;
    return Math.max(a, b);
  }

  const SORT_KEYS = {
    default: (c) => [stalled(c) ? 0 : 1, -(c.age_seconds || 0)],
    client: (c) => [String(c.client)],
    route: (c) => [String(c.route), String(c.path)],
    upstream: (c) => [String(c.upstream)],
    age: (c) => [c.age_seconds || 0],
    fps_up: (c) => [dir(c, 'to_backend').frames_per_second || 0],
    fps_down: (c) => [dir(c, 'to_client').frames_per_second || 0],
    last_frame: (c) => [maxOf(dir(c, 'to_backend').last_frame_age_seconds, dir(c, 'to_client').last_frame_age_seconds) || 0],
    gap: (c) => [maxOf(dir(c, 'to_backend').largest_gap_seconds, dir(c, 'to_client').largest_gap_seconds) || 0],
    stalls: (c) => [stalled(c) ? 1 : 0, stalls(c)],
    rtt: (c) => [rttOf(c) || 0],
  };

  function compare(a, b) {
    for (let i = 0; i < a.length; i++) {
      if (a[i] < b[i]) return -1;
      if (a[i] > b[i]) return 1;
    }
    return 0;
  }

  function sortCalls(calls) {
    const key = SORT_KEYS[state.sort.key] || SORT_KEYS.default;
    const d = state.sort.dir;
    return calls.slice().sort((x, y) => d * compare(key(x), key(y)) || compare([String(x.id)], [String(y.id)]));
  }

  function recordHistory(calls) {
    const now = Date.now();
    const seen = new Set();
    for (const c of calls) {
      const id = String(c.id);
      seen.add(id);
      let h = state.history.get(id);
      if (!h) {
        h = [];
        state.history.set(id, h);
      }
      h.push({
        t: now,
        up: dir(c, 'to_backend').frames_per_second,
        down: dir(c, 'to_client').frames_per_second,
        rtt: rttOf(c),
        rtt_backend: rttOf(c, 'backend'),
      });
      while (h.length > 0 && h[0].t < now - HISTORY_MS) h.shift();
    }
    for (const id of Array.from(state.history.keys())) {
      if (!seen.has(id)) state.history.delete(id);
    }
  }

  const SVG = 'http://www.w3.org/2000/svg';

  function sparkline(samples, fields, title) {
    const w = 120;
    const h = 22;
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('class', 'spark');
    svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
    svg.setAttribute('preserveAspectRatio', 'none');
    const t = document.createElementNS(SVG, 'title');
    t.textContent = title;
    svg.appendChild(t);
    const now = Date.now();
    // The x axis spans what the page has seen of this call, up to 2 minutes.
    const span = samples.length ? Math.min(HISTORY_MS, Math.max(10000, now - samples[0].t)) : HISTORY_MS;
    let max = 0;
    for (const s of samples) for (const f of fields) if (isNum(s[f])) max = Math.max(max, s[f]);
    if (max <= 0) max = 1;
    for (const f of fields) {
      const pts = samples
        .filter((s) => isNum(s[f]))
        .map((s) => {
          const x = w - ((now - s.t) / span) * w;
          const y = h - 1 - (s[f] / max) * (h - 2);
          return x.toFixed(1) + ',' + y.toFixed(1);
        });
      if (pts.length === 0) continue;
      if (pts.length === 1) pts.push(w + ',' + pts[0].split(',')[1]);
      const line = document.createElementNS(SVG, 'polyline');
      line.setAttribute('class', f);
      line.setAttribute('points', pts.join(' '));
      svg.appendChild(line);
    }
    return svg;
  }

  function pair(a, b, f) {
    return f(a) + ' / ' + f(b);
  }

  function framingNote(d) {
    return d.framing && d.framing !== 'tracked' ? ' (' + d.framing + ')' : '';
  }

  function callRow(c) {
    const up = dir(c, 'to_backend');
    const down = dir(c, 'to_client');
    const lc = leg(c, 'client');
    const lb = leg(c, 'backend');
    const isStalled = stalled(c);
    const h = state.history.get(String(c.id)) || [];
    const routeCell = td('Route / path', 'route', c.route, titled(el('span', 'path', c.path || ''), 'Host: ' + (c.host || '')));
    const stallCell = td('Stalls', 'num stalls', String(stalls(c)));
    if (isStalled) append(stallCell, el('span', 'stalled-label', ' stalled'));
    const row = el(
      'tr',
      isStalled ? 'stalled' : null,
      td('Client', 'client mono', c.client),
      routeCell,
      td('Upstream', 'upstream', upstreamBadge(c.upstream), reattachNote(c)),
      td('Age', 'num', duration(c.age_seconds)),
      td('Frames/s ↑', up.stalled ? 'num bad' : 'num', rate(up.frames_per_second) + framingNote(up)),
      td('Frames/s ↓', down.stalled ? 'num bad' : 'num', rate(down.frames_per_second) + framingNote(down)),
      td('Last frame', isStalled ? 'num bad' : 'num', pair(up.last_frame_age_seconds, down.last_frame_age_seconds, duration)),
      td('Largest gap', 'num', pair(up.largest_gap_seconds, down.largest_gap_seconds, duration)),
      stallCell,
      td('Ping RTT', 'num', titled(el('span', null, rttText(c) + ' / ' + rttText(c, 'backend')), 'client leg: last ' + ms(lc.rtt_last_ms) + ', median ' + ms(lc.rtt_median_ms) + '; backend leg: last ' + ms(lb.rtt_last_ms) + ', median ' + ms(lb.rtt_median_ms) + '. "streaming": the leg never fell silent for the ping interval, so shunt did not ping it; its frames show it alive.')),
      td('Last 2 min', 'spark', sparkline(h, ['up', 'down'], 'frames/s over the last 2 minutes (↑ blue, ↓ green)'), sparkline(h, ['rtt', 'rtt_backend'], 'ping RTT over the last 2 minutes (client leg purple, backend leg grey)'))
    );
    row.setAttribute('data-call', String(c.id));
    row.setAttribute('data-upstream', String(c.upstream));
    return row;
  }

  // A reattachable call's reattaches (and its gap now), beside its upstream.
  function reattachNote(c) {
    if (c.reattaching) return titled(el('span', 'small bad', ' reattaching'), 'the backend leg is being replaced');
    if (!c.reattached) return null;
    return titled(el('span', 'small', ' ↻' + c.reattached), 'reattached to a new backend connection ' + c.reattached + ' time(s)');
  }

  function renderCalls() {
    const note = byId('calls-note');
    const count = byId('calls-count');
    if (!state.calls) {
      note.hidden = false;
      note.textContent =
        state.callsStatus === 404
          ? 'Call details are not available: this shunt has no /calls endpoint. Live tunnel counts are under Totals.'
          : 'Call details are not available (/calls answered ' + state.callsStatus + ').';
      count.textContent = '';
      setRows('calls', [], 11, 'Not available.');
      return;
    }
    const calls = Array.isArray(state.calls.calls) ? state.calls.calls : [];
    const total = isNum(state.calls.total) ? state.calls.total : calls.length;
    const nStalled = calls.filter(stalled).length;
    count.textContent = '(' + total + (nStalled ? ', ' + nStalled + ' stalled' : '') + ')';
    if (total > calls.length) {
      note.hidden = false;
      note.textContent = 'Showing ' + calls.length + ' of ' + total + ' calls.';
    } else {
      note.hidden = true;
    }
    setRows('calls', sortCalls(calls).map(callRow), 11, 'No live calls.');
  }

  function defaultDir(key) {
    return key === 'client' || key === 'route' || key === 'upstream' || key === 'default' ? 1 : -1;
  }

  function applySort(key, dir) {
    state.sort = { key: key, dir: dir };
    for (const th of document.querySelectorAll('#calls th[data-sort]')) {
      if (th.getAttribute('data-sort') === key) {
        th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
      } else {
        th.removeAttribute('aria-sort');
      }
    }
    byId('sort-select').value = key;
    renderCalls();
  }

  function toggleSort(key) {
    applySort(key, state.sort.key === key ? -state.sort.dir : defaultDir(key));
  }

  function setUpSorting() {
    const select = byId('sort-select');
    const first = el('option', null, 'stalled first, then oldest');
    first.value = 'default';
    select.appendChild(first);
    for (const th of document.querySelectorAll('#calls th[data-sort]')) {
      const key = th.getAttribute('data-sort');
      th.addEventListener('click', () => toggleSort(key));
      th.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') {
          e.preventDefault();
          toggleSort(key);
        }
      });
      const opt = el('option', null, th.textContent);
      opt.value = key;
      select.appendChild(opt);
    }
    select.addEventListener('change', () => applySort(select.value, defaultDir(select.value)));
  }

  // ---- totals -----------------------------------------------------------------

  function renderTunnels(status) {
    const rows = (status.tunnels || []).map((t) =>
      el('tr', null, td('Route', null, t.route), td('Upstream', null, upstreamBadge(t.upstream)), td('Live', 'num', String(t.active)), td('Total', 'num', String(t.total)))
    );
    setRows('tunnels', rows, 4, 'No calls yet.');
    const summary = byId('calls-summary');
    const c = status.calls;
    summary.hidden = !c;
    if (c) {
      let text = c.active + ' live, ' + c.stalled + ' stalled now, ' + c.stalls_total + ' stalls since start';
      const r = c.reattach;
      if (r && (r.ok || r.gave_up || r.not_reattachable)) {
        text += '; reattached ' + r.ok + ', gave up ' + r.gave_up + ', not reattachable ' + r.not_reattachable;
      }
      summary.textContent = text;
      summary.className = c.stalled > 0 ? 'small bad' : 'small';
    }
  }

  function renderUpgrades(status) {
    const now = Date.now();
    const counts = status.upgrades || {};
    state.upgradeSamples.push({ t: now, counts: counts });
    while (state.upgradeSamples.length > 1 && state.upgradeSamples[0].t < now - UPGRADES_WINDOW_MS) state.upgradeSamples.shift();
    const first = state.upgradeSamples[0].counts;
    const rows = ['1xx', '2xx', '3xx', '4xx', '5xx'].map((k) => {
      const total = counts[k] || 0;
      const recent = Math.max(0, total - (first[k] || 0));
      const label = k === '1xx' ? '1xx upgraded' : k;
      return el('tr', k === '5xx' && recent > 0 ? 'bad' : null, td('Class', null, label), td('Total', 'num', String(total)), td('Last minute', 'num', String(recent)));
    });
    setRows('upgrades', rows, 3, '');
  }

  function renderCloses(status) {
    const calls = status.calls;
    if (!calls || !Array.isArray(calls.closes)) {
      setRows('closes', [], 5, 'Not available from this shunt.');
      return;
    }
    const lastHour = (c) => c.last_hour || 0;
    const rows = calls.closes
      .slice()
      .sort((a, b) => lastHour(b) - lastHour(a) || (b.count || 0) - (a.count || 0))
      .map((c) =>
        el(
          'tr',
          null,
          td('Route', null, c.route),
          td('By', null, c.closed_by),
          td('Code', 'num', c.code === null || c.code === undefined ? '—' : String(c.code)),
          td('1 h', 'num', String(lastHour(c))),
          td('All', 'num', String(c.count || 0))
        )
      );
    setRows('closes', rows, 5, 'No calls have ended yet.');
  }

  function renderReloads(status) {
    const dl = byId('reloads');
    const items = [['Generation', String(status.generation)]];
    const last = status.last_reload;
    if (!last) {
      items.push(['Last reload', 'none since start']);
    } else {
      items.push(['Last reload', ago(last.at) + ' (' + last.trigger + ')']);
      items.push(['Result', last.ok ? 'ok' : 'failed']);
      if (last.error) items.push(['Error', last.error]);
    }
    dl.replaceChildren(
      ...items.flatMap(([k, v]) => {
        const dd = el('dd', k === 'Error' || v === 'failed' ? 'bad err' : v === 'ok' ? 'ok' : null, v);
        return [el('dt', null, k), dd];
      })
    );
  }

  // One row per certificate: file certificates, then the ACME one (`source`),
  // with when ACME renews it and why the last order failed, if it did.
  function renderCertificates(status) {
    const rows = (status.certificates || []).map((c) => {
      const days = c.not_after ? Math.floor((Date.parse(c.not_after) - Date.now()) / 86400000) : NaN;
      const names = (c.names && c.names.length ? c.names : c.sans) || [];
      const row = el(
        'tr',
        days < CERT_WARN_DAYS ? 'expiring' : null,
        td('Names', 'err', titled(el('span', null, names.join(', ') || c.subject || ''), c.subject || '')),
        td('Expires', 'num', c.not_after ? String(c.not_after).slice(0, 10) : 'not issued yet'),
        td('Days left', 'num days', isFinite(days) ? String(days) : '—'),
        td('Source', 'source', c.source === 'acme' ? 'ACME (' + (c.challenge || '') + ')' : 'file'),
        td('Renews', 'num renews', c.renewal_at ? String(c.renewal_at).replace('T', ' ').slice(0, 16) : '—'),
        td('Last error', c.last_error ? 'bad err last-error' : 'muted last-error', c.last_error || '—')
      );
      return row;
    });
    setRows('certificates', rows, 6, 'No TLS listener.');
  }

  // ---- refresh loop -------------------------------------------------------------

  async function refresh() {
    const [status, calls, ready] = await Promise.all([get('/status'), get('/calls?limit=' + CALLS_LIMIT + '&sort=stalls'), get('/readyz')]);
    if (status.status !== 200 || !status.body) {
      renderFetchError(status.status === 0 ? 'shunt is unreachable: ' + status.error : '/status answered ' + status.status);
      return;
    }
    renderFetchError('');
    state.callsStatus = calls.status;
    state.calls = calls.status === 200 && calls.body ? calls.body : null;
    if (state.calls && Array.isArray(state.calls.calls)) recordHistory(state.calls.calls);
    const s = status.body;
    renderHeader(s, ready);
    renderRoutes(s, ready);
    renderUpstreams(s);
    renderCalls();
    renderTunnels(s);
    renderUpgrades(s);
    renderCloses(s);
    renderReloads(s);
    renderCertificates(s);
    document.body.setAttribute('data-refreshes', String(Number(document.body.getAttribute('data-refreshes') || 0) + 1));
  }

  async function loop() {
    try {
      await refresh();
    } catch (e) {
      renderFetchError('dashboard error: ' + e);
    }
    setTimeout(loop, REFRESH_MS);
  }

  document.addEventListener('DOMContentLoaded', () => {
    setUpSorting();
    loop();
  });
})();
