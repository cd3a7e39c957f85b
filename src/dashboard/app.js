// The credits dashboard: the caller's balance, cost per route and balance over time, read
// with the caller's own API key from the JSON readout and history. No dependencies, no
// inline handlers (the page's Content-Security-Policy allows only this script).
'use strict';
(function () {
  const page = document.body.dataset;
  const refreshMs = Number(page.refreshMs) || 5000;
  const number = new Intl.NumberFormat('en-US');
  const $ = (id) => document.getElementById(id);
  const state = { key: sessionStorage.getItem('credits-key') || '', routes: [], sort: 'credits', desc: true, timer: 0 };
  const errors = [];

  // What went wrong in the page, for whoever looks (and for the browser test).
  window.addEventListener('error', (e) => { errors.push(String(e.message)); page.errors = errors.join('\n'); });
  document.addEventListener('securitypolicyviolation', (e) => {
    errors.push('CSP: ' + e.violatedDirective); page.errors = errors.join('\n');
  });

  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const key = $('api-key').value.trim();
    if (!key) return;
    state.key = key;
    sessionStorage.setItem('credits-key', key);
    $('api-key').value = '';
    refresh();
  });
  for (const th of document.querySelectorAll('#routes th')) {
    th.addEventListener('click', () => {
      const key = th.dataset.key;
      state.desc = state.sort === key ? !state.desc : key !== 'route';
      state.sort = key;
      renderRoutes();
    });
  }

  async function get(url) {
    const response = await fetch(url, { headers: { Authorization: 'Bearer ' + state.key }, cache: 'no-store' });
    let json = null;
    try { json = await response.json(); } catch (_) { json = null; }
    return { status: response.status, json };
  }

  async function refresh() {
    clearTimeout(state.timer);
    if (!state.key) return;
    try {
      const readout = await get(page.readout);
      if (readout.status !== 200) return refused(readout);
      const history = await get(page.history + '?limit=500');
      render(readout.json, history.status === 200 ? history.json.entries : []);
      setStatus('Updated ' + new Date().toLocaleTimeString(), '');
    } catch (error) {
      setStatus('Cannot reach the server: ' + error.message, 'error');
    }
    state.timer = setTimeout(refresh, refreshMs);
  }

  function refused(answer) {
    const detail = (answer.json && (answer.json.detail || answer.json.title)) || ('HTTP ' + answer.status);
    if (answer.status === 401) {
      $('account').hidden = true;
      sessionStorage.removeItem('credits-key');
      state.key = '';
      return setStatus('This API key was not accepted: ' + detail, 'error');
    }
    if (answer.status === 402 && answer.json) {
      const short = answer.json.shortfall;
      setStatus('Refused for lack of credits' + (short ? ': ' + number.format(short) + ' credits short' : '') + '. ' + detail, 'error');
      return showTopUp(true);
    }
    setStatus(detail, 'error');
    state.timer = setTimeout(refresh, refreshMs);
  }

  function setStatus(text, kind) {
    $('status').textContent = text;
    $('status').className = kind;
  }

  function showTopUp(low) {
    const link = page.topUp;
    $('top-up').hidden = !link;
    $('top-up').className = low ? 'low' : '';
    if (link) {
      $('top-up-link').href = link;
      $('top-up-link').textContent = low ? 'Your balance is low: top up credits' : 'Top up credits';
    }
  }

  function render(account, entries) {
    $('account').hidden = false;
    $('account-id').textContent = account.account;
    $('available').textContent = number.format(account.available);
    $('held').textContent = number.format(account.held);
    $('committed').textContent = number.format(account.committed);
    $('runway').textContent = runway(account.runway_secs);
    $('thresholds').textContent = account.thresholds.length ? account.thresholds.map((t) => number.format(t)).join(', ') : 'none';
    const lowest = account.thresholds.length ? Math.min(...account.thresholds) : 0;
    const low = account.available <= 0 || account.available < lowest;
    showTopUp(low);
    if (account.available <= 0) {
      setStatus('Paid calls are refused (402) until you top up: ' + number.format(account.available) + ' credits available.', 'error');
    }
    state.routes = account.routes;
    renderRoutes();
    chart(entries, account.thresholds);
  }

  function runway(secs) {
    if (secs === null || secs === undefined) return 'not enough spending yet';
    const days = Math.floor(secs / 86400), hours = Math.floor((secs % 86400) / 3600), minutes = Math.floor((secs % 3600) / 60);
    if (days > 0) return number.format(days) + ' d ' + hours + ' h';
    if (hours > 0) return hours + ' h ' + minutes + ' min';
    return minutes + ' min';
  }

  function renderRoutes() {
    const rows = [...state.routes].sort((a, b) => {
      const x = a[state.sort], y = b[state.sort];
      const order = typeof x === 'string' ? x.localeCompare(y) : x - y;
      return state.desc ? -order : order;
    });
    const body = document.querySelector('#routes tbody');
    body.replaceChildren(...rows.map((r) => {
      const tr = document.createElement('tr');
      const cells = [r.route, number.format(r.calls), number.format(r.credits), r.average_cost.toLocaleString('en-US', { maximumFractionDigits: 2 })];
      cells.forEach((text, i) => {
        const td = document.createElement('td');
        td.textContent = text;
        if (i > 0) td.className = 'num';
        tr.append(td);
      });
      return tr;
    }));
    for (const th of document.querySelectorAll('#routes th')) {
      th.classList.toggle('sorted', th.dataset.key === state.sort);
      th.classList.toggle('asc', th.dataset.key === state.sort && !state.desc);
    }
  }

  // The chart's axes abbreviate (1.2k); the figures above never do.
  function short(n) {
    const abs = Math.abs(n);
    if (abs >= 1e6) return (n / 1e6).toFixed(1).replace(/\.0$/, '') + 'M';
    if (abs >= 1e3) return (n / 1e3).toFixed(1).replace(/\.0$/, '') + 'k';
    return String(n);
  }

  function svg(name, attrs, text) {
    const el = document.createElementNS('http://www.w3.org/2000/svg', name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function chart(entries, thresholds) {
    const box = $('chart');
    const points = [...entries].reverse().map((e) => [e.at_ms, e.available]);
    const [w, h, left, right, top, bottom] = [640, 220, 48, 12, 10, 24];
    const parts = [];
    if (points.length === 0) {
      parts.push(svg('text', { x: w / 2, y: h / 2, 'text-anchor': 'middle', class: 'label' }, 'No history yet'));
      return box.replaceChildren(...parts);
    }
    const t0 = points[0][0], t1 = Math.max(points[points.length - 1][0], t0 + 1);
    const values = points.map((p) => p[1]).concat(thresholds, [0]);
    const lo = Math.min(...values), hi = Math.max(...values, lo + 1);
    const x = (t) => left + ((t - t0) / (t1 - t0)) * (w - left - right);
    const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (h - top - bottom);
    parts.push(svg('line', { x1: left, y1: top, x2: left, y2: h - bottom, class: 'axis' }));
    parts.push(svg('line', { x1: left, y1: h - bottom, x2: w - right, y2: h - bottom, class: 'axis' }));
    for (const v of [lo, (lo + hi) / 2, hi]) {
      parts.push(svg('text', { x: left - 6, y: y(v) + 4, 'text-anchor': 'end', class: 'label' }, short(Math.round(v))));
    }
    parts.push(svg('text', { x: left, y: h - 6, class: 'label' }, new Date(t0).toLocaleTimeString()));
    parts.push(svg('text', { x: w - right, y: h - 6, 'text-anchor': 'end', class: 'label' }, new Date(t1).toLocaleTimeString()));
    for (const t of thresholds) {
      parts.push(svg('line', { x1: left, y1: y(t), x2: w - right, y2: y(t), class: 'threshold' }));
      parts.push(svg('text', { x: w - right, y: y(t) - 4, 'text-anchor': 'end', class: 'label' }, 'warn at ' + short(t)));
    }
    // A step line: the balance holds its value until the next entry.
    let d = 'M' + x(points[0][0]) + ' ' + y(points[0][1]);
    for (let i = 1; i < points.length; i++) {
      d += ' H' + x(points[i][0]) + ' V' + y(points[i][1]);
    }
    d += ' H' + (w - right);
    parts.push(svg('path', { d, class: 'line' }));
    box.replaceChildren(...parts);
  }

  if (state.key) refresh();
})();
