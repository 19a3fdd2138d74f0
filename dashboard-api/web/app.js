// infrawatch operations page. Plain JS, no framework, no build step, nothing
// loaded from elsewhere. Data: GET /api/v1/state and /api/v1/alerts, then the
// websocket /api/v1/stream (see notes/STREAM.md). Rendering is batched: events
// only mark parts dirty, and one requestAnimationFrame redraws what changed,
// so 10,000 devices on a canvas (no DOM node per device) stay smooth.
(function () {
  'use strict';

  var TOKEN_KEY = 'infrawatch.token';
  var STATUSES = ['online', 'stale', 'offline', 'unknown'];
  var COLORS = { online: '#3fbf6f', stale: '#f0b429', offline: '#ef5350', unknown: '#7b8794' };
  var ALERT_COLOR = '#ff6b9a';
  var SEVERITY_RANK = { critical: 0, warning: 1, info: 2 };
  var EVENTS = ['reading', 'status', 'alert'];
  var MAX_ALERT_ITEMS = 200; // the rest is counted, not drawn
  var MAX_SITE_ROWS = 40;
  var MAX_PANEL_METRICS = 16;
  var HOUR = 3600 * 1000;
  var POLL_MS = 10000; // /api/v1/state while the stream is down
  var TOTALS_MIN_MS = 250; // totals tables redraw at most 4 times a second
  var MAP_MIN_MS = 100; // the fleet layer at most 10 times a second

  function $(id) { return document.getElementById(id); }

  var state = {
    token: '',
    devices: new Map(), // id -> device (see upsertDevice)
    alerts: new Map(), // id -> alert JSON (firing or acknowledged)
    alertsLoaded: false,
    alertCounts: new Map(), // device id -> open alerts, from state.alerts
    selected: '',
    hover: '',
    lastSeq: 0,
    noLocation: 0
  };

  // ---------------------------------------------------------------- API

  function api(method, path, body) {
    var headers = { Authorization: 'Bearer ' + state.token, Accept: 'application/json' };
    var init = { method: method, headers: headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (resp) {
      return resp.text().then(function (text) {
        var data = null;
        if (text) {
          try { data = JSON.parse(text); } catch (e) { data = null; }
        }
        if (!resp.ok) {
          var msg = (data && data.error && data.error.message) || resp.statusText || 'request failed';
          var err = new Error(msg + ' (HTTP ' + resp.status + ')');
          err.status = resp.status;
          err.code = data && data.error && data.error.code;
          throw err;
        }
        return data;
      });
    });
  }

  // ---------------------------------------------------------------- scheduling

  var dirty = { geo: false, map: false, overlay: false, totals: false, alerts: false, panel: false };
  var rafPending = false;
  // Parts redrawn at most every minMs, however fast events come: a storm
  // of status changes over 10,000 devices costs a few full redraws a second.
  var throttle = {
    map: { minMs: MAP_MIN_MS, at: 0, timer: 0, draw: function () { drawMap(); } },
    totals: { minMs: TOTALS_MIN_MS, at: 0, timer: 0, draw: function () { renderTotals(); } }
  };

  function runThrottled(what) {
    var th = throttle[what];
    var wait = th.at + th.minMs - performance.now();
    if (wait <= 0) {
      dirty[what] = false;
      th.at = performance.now();
      th.draw();
    } else if (!th.timer) {
      th.timer = setTimeout(function () { th.timer = 0; invalidate(what); }, wait);
    }
  }

  function invalidate(what) {
    dirty[what] = true;
    if (!rafPending) {
      rafPending = true;
      requestAnimationFrame(frame);
    }
  }

  var lastFrameMs = 0;

  function frame() {
    rafPending = false;
    var t0 = performance.now();
    if (dirty.geo) {
      // A new projection must be drawn at once: the overlay follows it.
      dirty.geo = false;
      project();
      dirty.map = true;
      throttle.map.at = 0;
      dirty.overlay = true;
    }
    if (dirty.map) runThrottled('map');
    if (dirty.overlay) { dirty.overlay = false; drawOverlay(); }
    if (dirty.alerts) { dirty.alerts = false; renderAlerts(); }
    if (dirty.panel) { dirty.panel = false; renderPanel(); }
    if (dirty.totals) runThrottled('totals');
    lastFrameMs = performance.now() - t0;
  }

  // ---------------------------------------------------------------- devices

  function parseTime(s) {
    if (!s) return 0;
    var t = Date.parse(s);
    return isNaN(t) ? 0 : t;
  }

  function upsertDevice(s) {
    var d = state.devices.get(s.id);
    if (!d) {
      d = { id: s.id, x: NaN, y: NaN, lat: NaN, lon: NaN, metrics: {} };
      state.devices.set(s.id, d);
      dirty.geo = true;
    }
    d.name = s.name || s.id;
    d.domain = s.domain || 'unassigned';
    d.type = s.type || '';
    d.site = s.site || 'unassigned';
    d.lifecycle = s.lifecycle || '';
    d.status = s.status || 'unknown';
    d.lastSeen = parseTime(s.last_seen);
    d.snapAlerts = s.active_alerts || 0;
    var lat = s.location ? Number(s.location.lat) : NaN;
    var lon = s.location ? Number(s.location.lon) : NaN;
    if (lat !== d.lat || lon !== d.lon) {
      if (!(isNaN(lat) && isNaN(d.lat))) dirty.geo = true;
      d.lat = lat;
      d.lon = lon;
    }
    var metrics = {};
    var m = s.metrics || {};
    Object.keys(m).forEach(function (k) {
      metrics[k] = { value: m[k].value, ts: parseTime(m[k].ts), unit: m[k].unit || '' };
    });
    d.metrics = metrics;
    return d;
  }

  // applySnapshot replaces the picture of the fleet (GET /api/v1/state or a
  // stream snapshot); devices missing from it were deleted.
  function applySnapshot(snap) {
    var seen = new Set();
    (snap.devices || []).forEach(function (s) { upsertDevice(s); seen.add(s.id); });
    state.devices.forEach(function (_, id) {
      if (!seen.has(id)) { state.devices.delete(id); dirty.geo = true; }
    });
    if (state.selected && !state.devices.has(state.selected)) state.selected = '';
    invalidate('geo');
    invalidate('totals');
    invalidate('panel');
    if (!state.alertsLoaded) invalidate('alerts');
  }

  function applyReading(msg) {
    var d = state.devices.get(msg.device_id);
    if (!d) { refreshStateSoon(); return; }
    var ts = parseTime(msg.ts) || Date.now();
    var values = msg.values || {};
    Object.keys(values).forEach(function (k) {
      var cur = d.metrics[k];
      // Replays after a reconnect may be older than what a poll showed.
      if (cur && cur.ts > ts) return;
      d.metrics[k] = { value: values[k], ts: ts, unit: cur ? cur.unit : '' };
      if (panel.id === d.id) livePoint(k, ts, values[k]);
    });
    d.lastSeen = Date.now();
    if (panel.id === d.id) invalidate('panel');
  }

  function applyStatus(msg) {
    var d = state.devices.get(msg.device_id);
    if (!d) { refreshStateSoon(); return; }
    if (d.status === msg.status) return;
    d.status = msg.status || 'unknown';
    invalidate('map');
    invalidate('totals');
    if (panel.id === d.id) invalidate('panel');
  }

  var refreshTimer = 0;
  // A device the page has not seen (created after the snapshot): fetch the
  // state once for its name and location rather than guess.
  function refreshStateSoon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(function () {
      refreshTimer = 0;
      api('GET', '/api/v1/state').then(applySnapshot).catch(function () {});
    }, 1000);
  }

  function alertCount(d) {
    return state.alertsLoaded ? (state.alertCounts.get(d.id) || 0) : d.snapAlerts;
  }

  // ---------------------------------------------------------------- map

  var canvas = null;
  var ctx = null;
  // The overlay holds hover and selection rings, so moving the mouse over
  // 10,000 devices redraws two rings, not the fleet.
  var overlay = null;
  var octx = null;
  var view = { w: 0, h: 0, dpr: 1, grid: new Map(), cell: 16, proj: null };

  function resizeCanvas() {
    var rect = canvas.parentElement.getBoundingClientRect();
    var dpr = window.devicePixelRatio || 1;
    view.w = Math.max(1, Math.floor(rect.width));
    view.h = Math.max(1, Math.floor(rect.height));
    view.dpr = dpr;
    canvas.width = overlay.width = Math.round(view.w * dpr);
    canvas.height = overlay.height = Math.round(view.h * dpr);
    invalidate('geo');
  }

  // project fits every located device into the canvas: equirectangular with
  // the longitude scaled by cos(mid latitude), so distances look right at
  // city and country scale without a tile server.
  function project() {
    var minLat = Infinity, maxLat = -Infinity, minLon = Infinity, maxLon = -Infinity, n = 0;
    state.devices.forEach(function (d) {
      if (!isFinite(d.lat) || !isFinite(d.lon)) return;
      n++;
      if (d.lat < minLat) minLat = d.lat;
      if (d.lat > maxLat) maxLat = d.lat;
      if (d.lon < minLon) minLon = d.lon;
      if (d.lon > maxLon) maxLon = d.lon;
    });
    state.noLocation = state.devices.size - n;
    view.grid = new Map();
    if (n === 0) {
      view.proj = null;
      state.devices.forEach(function (d) { d.x = NaN; d.y = NaN; });
      return;
    }
    var midLat = (minLat + maxLat) / 2;
    var kx = Math.max(0.05, Math.cos(midLat * Math.PI / 180));
    // At least ~1 km across, so one device or one site is not a huge zoom.
    var minSpan = 0.01;
    if (maxLat - minLat < minSpan) { var c = (minLat + maxLat) / 2; minLat = c - minSpan / 2; maxLat = c + minSpan / 2; }
    if ((maxLon - minLon) * kx < minSpan) { var cl = (minLon + maxLon) / 2; minLon = cl - minSpan / kx / 2; maxLon = cl + minSpan / kx / 2; }
    var pad = 28;
    var spanX = (maxLon - minLon) * kx;
    var spanY = maxLat - minLat;
    var scale = Math.min((view.w - 2 * pad) / spanX, (view.h - 2 * pad) / spanY);
    if (!(scale > 0)) scale = 1;
    var ox = (view.w - spanX * scale) / 2;
    var oy = (view.h - spanY * scale) / 2;
    view.proj = { minLat: minLat, maxLat: maxLat, minLon: minLon, maxLon: maxLon, kx: kx, scale: scale, ox: ox, oy: oy };
    var cell = view.cell;
    state.devices.forEach(function (d) {
      if (!isFinite(d.lat) || !isFinite(d.lon)) { d.x = NaN; d.y = NaN; return; }
      d.x = ox + (d.lon - minLon) * kx * scale;
      d.y = oy + (maxLat - d.lat) * scale;
      var key = Math.floor(d.x / cell) * 100003 + Math.floor(d.y / cell);
      var bucket = view.grid.get(key);
      if (bucket) bucket.push(d); else view.grid.set(key, [d]);
    });
  }

  function niceStep(span) {
    var raw = span / 5;
    var p = Math.pow(10, Math.floor(Math.log10(raw)));
    var f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
  }

  function drawGraticule(p) {
    ctx.strokeStyle = '#1a222b';
    ctx.fillStyle = '#4a5663';
    ctx.lineWidth = 1;
    ctx.font = '11px system-ui, sans-serif';
    var latStep = niceStep(p.maxLat - p.minLat + (view.h / p.scale) * 0.2);
    var lonStep = niceStep((view.w / p.scale) / p.kx);
    var topLat = p.maxLat + p.oy / p.scale;
    var botLat = p.maxLat - (view.h - p.oy) / p.scale;
    var leftLon = p.minLon - p.ox / p.scale / p.kx;
    var rightLon = p.minLon + (view.w - p.ox) / p.scale / p.kx;
    var digits = Math.max(0, Math.min(4, -Math.floor(Math.log10(Math.min(latStep, lonStep)))));
    ctx.beginPath();
    for (var lat = Math.ceil(botLat / latStep) * latStep; lat <= topLat; lat += latStep) {
      var y = Math.round(p.oy + (p.maxLat - lat) * p.scale) + 0.5;
      ctx.moveTo(0, y); ctx.lineTo(view.w, y);
      if (y > 14 && y < view.h - 16) ctx.fillText(lat.toFixed(digits) + '°', 4, y - 3);
    }
    for (var lon = Math.ceil(leftLon / lonStep) * lonStep; lon <= rightLon; lon += lonStep) {
      var x = Math.round(p.ox + (lon - p.minLon) * p.kx * p.scale) + 0.5;
      ctx.moveTo(x, 0); ctx.lineTo(x, view.h);
      if (x > 40 && x < view.w - 40) ctx.fillText(lon.toFixed(digits) + '°', x + 3, view.h - 4);
    }
    ctx.stroke();
  }

  function drawMap() {
    if (!ctx) return;
    ctx.setTransform(view.dpr, 0, 0, view.dpr, 0, 0);
    ctx.clearRect(0, 0, view.w, view.h);
    var p = view.proj;
    $('map-empty').hidden = !!p;
    canvas.dataset.deviceCount = String(state.devices.size);
    $('map-note').textContent = state.noLocation > 0 ? state.noLocation + ' device(s) without a location are not on the map.' : '';
    if (!p) return;
    drawGraticule(p);
    var r = dotRadius();
    // One path per colour: a few fills for the whole fleet. Problems last,
    // so they are drawn on top of healthy neighbours.
    var groups = { unknown: [], online: [], stale: [], offline: [] };
    var alerted = [];
    state.devices.forEach(function (d) {
      if (d.x !== d.x) return; // NaN: no location
      (groups[d.status] || groups.unknown).push(d);
      if (alertCount(d) > 0) alerted.push(d);
    });
    ['unknown', 'online', 'stale', 'offline'].forEach(function (st) {
      var g = groups[st];
      if (!g.length) return;
      ctx.beginPath();
      for (var i = 0; i < g.length; i++) {
        ctx.moveTo(g[i].x + r, g[i].y);
        ctx.arc(g[i].x, g[i].y, r, 0, 2 * Math.PI);
      }
      ctx.fillStyle = COLORS[st];
      ctx.fill();
    });
    if (alerted.length) {
      ctx.beginPath();
      var ar = r + 3;
      for (var j = 0; j < alerted.length; j++) {
        ctx.moveTo(alerted[j].x + ar, alerted[j].y);
        ctx.arc(alerted[j].x, alerted[j].y, ar, 0, 2 * Math.PI);
      }
      ctx.strokeStyle = ALERT_COLOR;
      ctx.lineWidth = 2;
      ctx.stroke();
    }
    canvas.dataset.drawnAt = String(Date.now());
  }

  function dotRadius() {
    var n = state.devices.size;
    return n > 5000 ? 2 : n > 1000 ? 3 : n > 200 ? 4 : 6;
  }

  function drawOverlay() {
    if (!octx) return;
    octx.setTransform(view.dpr, 0, 0, view.dpr, 0, 0);
    octx.clearRect(0, 0, view.w, view.h);
    var r = dotRadius();
    var h = state.devices.get(state.hover);
    if (h && h.x === h.x) ring(h, r + 5, 'rgba(255,255,255,0.6)', 1.5);
    var s = state.devices.get(state.selected);
    if (s && s.x === s.x) {
      ring(s, r + 6, '#ffffff', 2.5);
      octx.beginPath();
      octx.moveTo(s.x - r - 14, s.y); octx.lineTo(s.x - r - 8, s.y);
      octx.moveTo(s.x + r + 8, s.y); octx.lineTo(s.x + r + 14, s.y);
      octx.moveTo(s.x, s.y - r - 14); octx.lineTo(s.x, s.y - r - 8);
      octx.moveTo(s.x, s.y + r + 8); octx.lineTo(s.x, s.y + r + 14);
      octx.stroke();
    }
  }

  function ring(d, radius, color, width) {
    octx.beginPath();
    octx.arc(d.x, d.y, radius, 0, 2 * Math.PI);
    octx.strokeStyle = color;
    octx.lineWidth = width;
    octx.stroke();
  }

  // deviceAt finds the nearest device within a few pixels, through the
  // grid built by project(): a handful of candidates, not the whole fleet.
  function deviceAt(x, y) {
    var cell = view.cell;
    var cx = Math.floor(x / cell), cy = Math.floor(y / cell);
    var best = null, bestD = 10 * 10;
    for (var i = -1; i <= 1; i++) {
      for (var j = -1; j <= 1; j++) {
        var bucket = view.grid.get((cx + i) * 100003 + (cy + j));
        if (!bucket) continue;
        for (var k = 0; k < bucket.length; k++) {
          var d = bucket[k];
          var dd = (d.x - x) * (d.x - x) + (d.y - y) * (d.y - y);
          if (dd < bestD) { bestD = dd; best = d; }
        }
      }
    }
    return best;
  }

  function onMapMove(ev) {
    var rect = canvas.getBoundingClientRect();
    var x = ev.clientX - rect.left, y = ev.clientY - rect.top;
    var d = deviceAt(x, y);
    var id = d ? d.id : '';
    var tip = $('map-tip');
    if (d) {
      tip.textContent = (d.name !== d.id ? d.name + ' (' + d.id + ')' : d.id) + ' · ' + d.status + ' · ' + d.site +
        (alertCount(d) ? ' · ' + alertCount(d) + ' alert(s)' : '');
      tip.style.left = d.x + 'px';
      tip.style.top = d.y + 'px';
      tip.hidden = false;
      canvas.style.cursor = 'pointer';
    } else {
      tip.hidden = true;
      canvas.style.cursor = 'crosshair';
    }
    if (id !== state.hover) { state.hover = id; invalidate('overlay'); }
  }

  function onMapLeave() {
    $('map-tip').hidden = true;
    if (state.hover) { state.hover = ''; invalidate('overlay'); }
  }

  function onMapClick(ev) {
    var rect = canvas.getBoundingClientRect();
    var d = deviceAt(ev.clientX - rect.left, ev.clientY - rect.top);
    if (d) select(d.id);
  }

  // ---------------------------------------------------------------- totals

  var totalsSig = '';

  function renderTotals() {
    var byDomain = new Map(), bySite = new Map(), all = [0, 0, 0, 0];
    state.devices.forEach(function (d) {
      var i = STATUSES.indexOf(d.status);
      if (i < 0) i = 3;
      all[i]++;
      var a = byDomain.get(d.domain); if (!a) { a = [0, 0, 0, 0]; byDomain.set(d.domain, a); } a[i]++;
      var b = bySite.get(d.site); if (!b) { b = [0, 0, 0, 0]; bySite.set(d.site, b); } b[i]++;
    });
    var domains = Array.from(byDomain.entries()).sort(function (x, y) { return x[0] < y[0] ? -1 : 1; });
    var sites = Array.from(bySite.entries()).sort(function (x, y) {
      return (y[1][2] - x[1][2]) || (y[1][1] - x[1][1]) || (x[0] < y[0] ? -1 : 1);
    });
    var sig = JSON.stringify([all, domains, sites.slice(0, MAX_SITE_ROWS), sites.length]);
    if (sig === totalsSig) return;
    totalsSig = sig;
    var t = $('totals');
    t.dataset.total = String(state.devices.size);
    STATUSES.forEach(function (st, i) { t.dataset[st] = String(all[i]); });
    $('totals-all').textContent = state.devices.size + ' devices';
    fillCounts($('totals-domain').tBodies[0], domains, 'domain', all, Infinity);
    fillCounts($('totals-site').tBodies[0], sites, 'site', null, MAX_SITE_ROWS);
  }

  function fillCounts(tbody, rows, attr, all, max) {
    var frag = document.createDocumentFragment();
    rows.slice(0, max).forEach(function (r) { frag.appendChild(countRow(r[0], r[1], attr)); });
    if (rows.length > max) {
      var more = document.createElement('tr');
      var td = document.createElement('td');
      td.colSpan = 5;
      td.className = 'muted';
      td.textContent = '… and ' + (rows.length - max) + ' more';
      more.appendChild(td);
      frag.appendChild(more);
    }
    if (all && rows.length > 1) {
      var tr = countRow('All', all, attr);
      tr.className = 'all';
      tr.setAttribute('data-' + attr, '*');
      frag.appendChild(tr);
    }
    tbody.replaceChildren(frag);
  }

  function countRow(name, counts, attr) {
    var tr = document.createElement('tr');
    tr.setAttribute('data-' + attr, name);
    var th = document.createElement('th');
    th.scope = 'row';
    th.textContent = name;
    tr.appendChild(th);
    STATUSES.forEach(function (st, i) {
      var td = document.createElement('td');
      td.setAttribute('data-status', st);
      td.setAttribute('data-count', String(counts[i]));
      td.textContent = String(counts[i]);
      tr.appendChild(td);
    });
    return tr;
  }

  // ---------------------------------------------------------------- alerts

  function loadAlerts() {
    return Promise.all(['firing', 'acknowledged'].map(function (st) {
      return api('GET', '/api/v1/alerts?state=' + st);
    })).then(function (answers) {
      var next = new Map();
      answers.forEach(function (a) { listOf(a, 'alerts').forEach(function (al) { if (al && al.id) next.set(al.id, al); }); });
      state.alerts = next;
      state.alertsLoaded = true;
      showAlertError('');
      alertsChanged();
    }).catch(function (err) {
      if (err.status === 401) { askToken('That token is no longer accepted.'); return; }
      showAlertError('Could not load alerts: ' + err.message);
    });
  }

  // listOf accepts a bare array or {key: [...]}, so the page does not break
  // if an answer is wrapped later.
  function listOf(data, key) {
    if (Array.isArray(data)) return data;
    if (data && Array.isArray(data[key])) return data[key];
    if (data && Array.isArray(data.items)) return data.items;
    return [];
  }

  function applyAlert(msg) {
    var a = msg.alert;
    if (!a || !a.id) return;
    var st = a.state || msg.transition;
    if (st === 'firing' || st === 'acknowledged') state.alerts.set(a.id, a);
    else state.alerts.delete(a.id); // resolved (or anything not open)
    state.alertsLoaded = true;
    alertsChanged();
  }

  function alertsChanged() {
    var counts = new Map();
    state.alerts.forEach(function (a) { counts.set(a.device_id, (counts.get(a.device_id) || 0) + 1); });
    state.alertCounts = counts;
    invalidate('alerts');
    invalidate('map');
    if (panel.id) invalidate('panel');
  }

  function showAlertError(text) {
    var el = $('alert-error');
    el.textContent = text;
    el.hidden = !text;
  }

  var alertNodes = new Map(); // alert id -> li, kept so open forms survive updates

  function renderAlerts() {
    var list = Array.from(state.alerts.values()).sort(function (x, y) {
      var sx = x.state === 'firing' ? 0 : 1, sy = y.state === 'firing' ? 0 : 1;
      if (sx !== sy) return sx - sy;
      var rx = SEVERITY_RANK[x.severity], ry = SEVERITY_RANK[y.severity];
      rx = rx === undefined ? 3 : rx; ry = ry === undefined ? 3 : ry;
      if (rx !== ry) return rx - ry;
      return parseTime(y.fired_at || y.starts_at) - parseTime(x.fired_at || x.starts_at);
    });
    var count = $('alert-count');
    count.textContent = String(list.length);
    count.dataset.count = String(list.length);
    $('alert-empty').hidden = list.length > 0;
    var ul = $('alert-list');
    // Nodes are reused and moved as little as possible, and the focus is
    // put back if a move took it: an operator may be typing a note in one
    // of them while alerts come and go.
    var active = document.activeElement;
    var focused = active && active !== document.body && ul.contains(active) ? active : null;
    var selStart = focused && typeof focused.selectionStart === 'number' ? focused.selectionStart : null;
    var selEnd = selStart === null ? null : focused.selectionEnd;
    var shown = list.slice(0, MAX_ALERT_ITEMS);
    var keep = new Set(shown.map(function (a) { return a.id; }));
    // Gone first: one left in the list would be in the way of the order below.
    alertNodes.forEach(function (li, id) {
      if (!keep.has(id)) { li.remove(); alertNodes.delete(id); }
    });
    var prev = null;
    shown.forEach(function (a) {
      var li = alertNodes.get(a.id);
      if (!li) { li = buildAlertItem(a.id); alertNodes.set(a.id, li); }
      fillAlertItem(li, a);
      var want = prev ? prev.nextSibling : ul.firstChild;
      if (want !== li) ul.insertBefore(li, want); // only when out of order
      prev = li;
    });
    var more = ul.querySelector('.more');
    if (list.length > MAX_ALERT_ITEMS) {
      if (!more) { more = document.createElement('li'); more.className = 'more muted'; }
      more.textContent = '… and ' + (list.length - MAX_ALERT_ITEMS) + ' more';
      if (ul.lastChild !== more) ul.appendChild(more);
    } else if (more) {
      more.remove();
    }
    if (focused && focused.isConnected && document.activeElement !== focused) {
      focused.focus();
      if (selStart !== null) focused.setSelectionRange(selStart, selEnd);
    }
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  var formSeq = 0;

  function buildAlertItem(id) {
    var li = el('li', 'alert-item');
    li.setAttribute('data-alert-id', id);
    var top = el('div', 'alert-top');
    top.appendChild(el('span', 'sev'));
    var dev = el('button', 'linklike device-link');
    dev.type = 'button';
    dev.addEventListener('click', function () { select(dev.dataset.deviceId); });
    top.appendChild(dev);
    top.appendChild(el('span', 'site muted'));
    top.appendChild(el('span', 'alert-state'));
    li.appendChild(top);
    li.appendChild(el('p', 'alert-msg'));
    li.appendChild(el('div', 'alert-meta'));

    var actions = el('div', 'alert-actions');
    var ack = el('button', 'ack primary', 'Acknowledge');
    ack.type = 'button';
    actions.appendChild(ack);
    li.appendChild(actions);

    var form = el('form', 'ack-form');
    form.hidden = true;
    var inputId = 'ack-note-' + (++formSeq);
    var label = el('label', '', 'Note');
    label.htmlFor = inputId;
    var input = el('input', 'ack-note');
    input.id = inputId;
    input.type = 'text';
    input.maxLength = 500;
    input.placeholder = 'e.g. crew on the way';
    var submit = el('button', 'ack-submit primary', 'Confirm acknowledge');
    submit.type = 'submit';
    var cancel = el('button', 'ack-cancel ghost', 'Cancel');
    cancel.type = 'button';
    form.appendChild(label);
    form.appendChild(input);
    form.appendChild(submit);
    form.appendChild(cancel);
    li.appendChild(form);
    var err = el('p', 'error ack-error');
    err.setAttribute('role', 'alert');
    err.hidden = true;
    li.appendChild(err);

    ack.addEventListener('click', function () {
      form.hidden = false;
      actions.hidden = true;
      err.hidden = true;
      input.focus();
    });
    cancel.addEventListener('click', function () {
      form.hidden = true;
      actions.hidden = false;
      ack.focus();
    });
    form.addEventListener('submit', function (ev) {
      ev.preventDefault();
      submit.disabled = true;
      acknowledge(id, input.value.trim()).then(function () {
        form.hidden = true;
        input.value = '';
        actions.hidden = false;
      }).catch(function (e) {
        err.textContent = e.message;
        err.hidden = false;
        li.setAttribute('data-ack-error', String(e.status || 0));
      }).then(function () { submit.disabled = false; });
    });
    return li;
  }

  function fillAlertItem(li, a) {
    li.setAttribute('data-state', a.state || '');
    li.setAttribute('data-severity', a.severity || '');
    li.setAttribute('data-device-id', a.device_id || '');
    var sev = li.querySelector('.sev');
    sev.className = 'sev ' + (a.severity || '');
    sev.textContent = a.severity || 'alert';
    var dev = li.querySelector('.device-link');
    dev.textContent = a.device_id || '';
    dev.dataset.deviceId = a.device_id || '';
    dev.setAttribute('aria-label', 'Open device ' + (a.device_id || ''));
    li.querySelector('.site').textContent = a.site || '';
    li.querySelector('.alert-state').textContent = a.state || '';
    li.querySelector('.alert-msg').textContent = a.message || (a.metric + ' = ' + a.value);
    var since = parseTime(a.fired_at || a.starts_at);
    var meta = (since ? 'since ' + clock(since) : '') + (a.metric ? ' · ' + a.metric + ' ' + fmtValue(a.value) : '');
    if (a.state === 'acknowledged') {
      meta += ' · acknowledged' + (a.acked_by ? ' by ' + a.acked_by : '') + (a.ack_note ? ': “' + a.ack_note + '”' : '');
    }
    if (a.silenced) meta += ' · silenced';
    li.querySelector('.alert-meta').textContent = meta;
    var ackable = a.state === 'firing';
    li.querySelector('.alert-actions').style.display = ackable ? '' : 'none';
    if (!ackable) li.querySelector('.ack-form').hidden = true;
  }

  function acknowledge(id, note) {
    return api('POST', '/api/v1/alerts/' + encodeURIComponent(id) + '/ack', { note: note }).then(function (data) {
      var a = data && (data.alert || data);
      if (a && a.id === id && a.state) {
        if (a.state === 'firing' || a.state === 'acknowledged') state.alerts.set(id, a); else state.alerts.delete(id);
      } else {
        var cur = state.alerts.get(id);
        if (cur) { cur.state = 'acknowledged'; cur.ack_note = note; }
      }
      alertsChanged();
    }, function (err) {
      if (err.status === 403) {
        var e = new Error('Not allowed (403): acknowledging needs an operator or admin token; this token is read-only.');
        e.status = 403;
        throw e;
      }
      if (err.status === 401) askToken('That token is no longer accepted.');
      if (err.status === 409 || err.status === 404) loadAlerts();
      throw new Error('Acknowledge failed: ' + err.message);
    });
  }

  // ---------------------------------------------------------------- device panel

  // panel holds the selected device's series: history from the API plus the
  // readings that arrived since it was opened.
  var panel = { id: '', specs: {}, series: new Map(), gen: 0, historyNote: '' };

  function select(id) {
    if (!id || !state.devices.has(id)) return;
    state.selected = id;
    if (panel.id !== id) {
      panel = { id: id, specs: {}, series: new Map(), gen: panel.gen + 1, historyNote: '' };
      var gen = panel.gen;
      var d = state.devices.get(id);
      api('GET', '/api/v1/devices/' + encodeURIComponent(id)).then(function (dev) {
        if (panel.gen !== gen || !dev) return;
        panel.specs = dev.metrics || {};
        loadHistory(gen, Object.keys(Object.assign({}, panel.specs, d.metrics)));
        invalidate('panel');
      }).catch(function () {
        if (panel.gen === gen) loadHistory(gen, Object.keys(d.metrics));
      });
    }
    invalidate('overlay');
    invalidate('panel');
  }

  function deselect() {
    state.selected = '';
    panel = { id: '', specs: {}, series: new Map(), gen: panel.gen + 1, historyNote: '' };
    invalidate('overlay');
    invalidate('panel');
  }

  function seriesOf(metric) {
    var s = panel.series.get(metric);
    if (!s) { s = { hist: [], live: [], loaded: false }; panel.series.set(metric, s); }
    return s;
  }

  function livePoint(metric, ts, value) {
    var s = seriesOf(metric);
    var v = typeof value === 'boolean' ? (value ? 1 : 0) : Number(value);
    if (!isFinite(v)) return;
    s.live.push([ts, v]);
    var cut = Date.now() - HOUR;
    while (s.live.length && (s.live[0][0] < cut || s.live.length > 4000)) s.live.shift();
  }

  function loadHistory(gen, metrics) {
    var failed = 0;
    var pending = metrics.slice(0, MAX_PANEL_METRICS);
    pending.forEach(function (m) {
      var q = '/api/v1/history?device_id=' + encodeURIComponent(panel.id) + '&metric=' + encodeURIComponent(m) +
        '&start=-1h&every=1m&agg=mean';
      api('GET', q).then(function (data) {
        if (panel.gen !== gen) return;
        var s = seriesOf(m);
        s.hist = extractPoints(data, m);
        s.loaded = true;
        invalidate('panel');
      }).catch(function () {
        if (panel.gen !== gen) return;
        failed++;
        panel.historyNote = 'History unavailable for ' + failed + ' metric(s); showing live readings since the panel opened.';
        invalidate('panel');
      });
    });
  }

  // extractPoints reads [time, value] pairs from a history answer. It looks
  // for the first array of points ({time|_time|ts|start|stop, value|_value})
  // anywhere in the answer, preferring a series labelled with the metric.
  var TIME_KEYS = ['time', '_time', 'ts', 't', 'stop', 'start'];
  var VALUE_KEYS = ['value', '_value', 'v', 'mean', 'y'];

  function pointOf(p) {
    if (Array.isArray(p) && p.length >= 2) {
      var ta = typeof p[0] === 'number' ? p[0] : parseTime(p[0]);
      return ta ? [ta, p[1] === null ? NaN : Number(p[1])] : null;
    }
    if (!p || typeof p !== 'object') return null;
    var t = 0, v;
    for (var i = 0; i < TIME_KEYS.length && !t; i++) {
      var tv = p[TIME_KEYS[i]];
      if (tv !== undefined) t = typeof tv === 'number' ? tv : parseTime(tv);
    }
    for (var j = 0; j < VALUE_KEYS.length && v === undefined; j++) {
      if (p[VALUE_KEYS[j]] !== undefined) v = p[VALUE_KEYS[j]];
    }
    if (!t || v === undefined) return null;
    return [t, v === null ? NaN : typeof v === 'boolean' ? (v ? 1 : 0) : Number(v)];
  }

  function extractPoints(data, metric) {
    var found = null, foundForMetric = null;
    function visit(v, depth, label) {
      if (depth > 5 || foundForMetric) return;
      if (Array.isArray(v)) {
        if (v.length && pointOf(v[0]) && (typeof v[0] === 'object')) {
          var pts = v.map(pointOf).filter(Boolean);
          if (label === metric) foundForMetric = pts; else if (!found) found = pts;
          return;
        }
        v.forEach(function (x) { visit(x, depth + 1, label); });
      } else if (v && typeof v === 'object') {
        var lab = v.metric || v.field || v._field || label;
        Object.keys(v).forEach(function (k) { visit(v[k], depth + 1, k === metric ? metric : lab); });
      }
    }
    visit(data, 0, '');
    var pts = foundForMetric || found || [];
    return pts.filter(function (p) { return isFinite(p[1]); }).sort(function (a, b) { return a[0] - b[0]; });
  }

  function renderPanel() {
    var d = state.devices.get(panel.id);
    var p = $('device-panel');
    $('device-body').hidden = !d;
    $('device-empty').hidden = !!d;
    $('device-close').hidden = !d;
    p.dataset.deviceId = d ? d.id : '';
    if (!d) { $('device-title').textContent = 'Device'; return; }
    $('device-title').textContent = d.name;
    $('device-id').textContent = d.id;
    var st = $('device-status');
    st.textContent = d.status;
    st.dataset.status = d.status;
    p.dataset.status = d.status;
    $('device-kind').textContent = d.domain + ' / ' + (d.type || '—');
    $('device-site').textContent = d.site;
    $('device-seen').textContent = d.lastSeen ? ago(d.lastSeen) : 'never';
    var n = alertCount(d);
    $('device-alerts').textContent = n ? n + ' open' : 'none';
    $('history-note').textContent = panel.historyNote;

    var names = Object.keys(Object.assign({}, panel.specs, d.metrics)).sort().slice(0, MAX_PANEL_METRICS);
    var tbody = $('metric-rows');
    var rows = new Map();
    Array.prototype.forEach.call(tbody.rows, function (r) { rows.set(r.getAttribute('data-metric'), r); });
    names.forEach(function (m) {
      var r = rows.get(m);
      if (!r) r = buildMetricRow(m);
      rows.delete(m);
      tbody.appendChild(r);
      fillMetricRow(r, m, d.metrics[m], panel.specs[m] || {});
    });
    rows.forEach(function (r) { r.remove(); });
  }

  function buildMetricRow(m) {
    var tr = document.createElement('tr');
    tr.setAttribute('data-metric', m);
    var th = el('th', 'name', m);
    th.scope = 'row';
    tr.appendChild(th);
    var td = el('td');
    td.appendChild(el('span', 'value', '—'));
    td.appendChild(el('span', 'unit'));
    tr.appendChild(td);
    var sp = el('td');
    var c = el('canvas', 'spark');
    c.setAttribute('role', 'img');
    c.setAttribute('aria-label', m + ' over the last hour');
    sp.appendChild(c);
    tr.appendChild(sp);
    return tr;
  }

  function fillMetricRow(tr, m, latest, spec) {
    var v = tr.querySelector('.value');
    var text = latest ? fmtValue(latest.value) : '—';
    if (v.textContent !== text) {
      v.textContent = text;
      tr.classList.add('flash');
      setTimeout(function () { tr.classList.remove('flash'); }, 600);
    }
    tr.setAttribute('data-value', latest ? String(latest.value) : '');
    tr.setAttribute('data-ts', latest ? String(latest.ts) : '');
    tr.title = latest ? 'measured ' + clock(latest.ts) : 'no reading yet';
    tr.querySelector('.unit').textContent = (latest && latest.unit) || spec.unit || '';
    drawSpark(tr.querySelector('canvas'), seriesOf(m), latest, spec);
  }

  function drawSpark(c, s, latest, spec) {
    var rect = c.getBoundingClientRect();
    var dpr = window.devicePixelRatio || 1;
    var w = Math.max(1, Math.round(rect.width)), h = Math.max(1, Math.round(rect.height));
    if (c.width !== w * dpr || c.height !== h * dpr) { c.width = w * dpr; c.height = h * dpr; }
    var g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    var now = Date.now(), from = now - HOUR;
    var lastHist = s.hist.length ? s.hist[s.hist.length - 1][0] : 0;
    var pts = s.hist.filter(function (p) { return p[0] >= from; })
      .concat(s.live.filter(function (p) { return p[0] > lastHist && p[0] >= from; }));
    if (!pts.length && latest && latest.ts >= from) {
      var lv = typeof latest.value === 'boolean' ? (latest.value ? 1 : 0) : Number(latest.value);
      if (isFinite(lv)) pts = [[latest.ts, lv]];
    }
    c.dataset.points = String(pts.length);
    if (!pts.length) {
      g.fillStyle = '#4a5663';
      g.font = '10px system-ui, sans-serif';
      g.fillText('no data in the last hour', 2, h / 2 + 3);
      return;
    }
    var lo = Infinity, hi = -Infinity;
    pts.forEach(function (p) { if (p[1] < lo) lo = p[1]; if (p[1] > hi) hi = p[1]; });
    var hasRange = isFinite(spec.min) && isFinite(spec.max) && spec.max > spec.min;
    if (hi === lo) { hi += 1; lo -= 1; }
    var pad = 3;
    function X(t) { return pad + (t - from) / HOUR * (w - 2 * pad); }
    function Y(v) { return h - pad - (v - lo) / (hi - lo) * (h - 2 * pad); }
    if (hasRange) {
      // The normal range, clipped to the drawn band.
      var top = Math.max(pad, Math.min(h - pad, Y(spec.max))), bot = Math.max(pad, Math.min(h - pad, Y(spec.min)));
      if (bot > top) { g.fillStyle = 'rgba(63,191,111,0.10)'; g.fillRect(0, top, w, bot - top); }
    }
    g.beginPath();
    pts.forEach(function (p, i) { if (i) g.lineTo(X(p[0]), Y(p[1])); else g.moveTo(X(p[0]), Y(p[1])); });
    g.strokeStyle = '#5aa9e6';
    g.lineWidth = 1.5;
    g.stroke();
    var last = pts[pts.length - 1];
    var out = hasRange && (last[1] < spec.min || last[1] > spec.max);
    g.beginPath();
    g.arc(X(last[0]), Y(last[1]), 2.5, 0, 2 * Math.PI);
    g.fillStyle = out ? '#ef5350' : '#e4e9ef';
    g.fill();
  }

  // ---------------------------------------------------------------- formatting

  function fmtValue(v) {
    if (typeof v === 'boolean') return v ? 'true' : 'false';
    if (typeof v !== 'number' || !isFinite(v)) return v === undefined || v === null ? '—' : String(v);
    var a = Math.abs(v);
    if (a >= 1000 || Number.isInteger(v)) return String(Math.round(v * 100) / 100);
    if (a >= 100) return v.toFixed(1);
    if (a >= 1) return v.toFixed(2);
    return v.toPrecision(3);
  }

  function clock(t) {
    return new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }

  function ago(t) {
    var s = Math.max(0, Math.round((Date.now() - t) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return new Date(t).toLocaleString();
  }

  // ---------------------------------------------------------------- stream

  var conn = { ws: null, wanted: false, attempt: 0, timer: 0, countdown: 0, poll: 0 };

  function setConn(st, text) {
    var c = $('conn-status');
    c.dataset.state = st;
    c.querySelector('.text').textContent = text;
  }

  function connect() {
    clearTimeout(conn.timer);
    clearInterval(conn.countdown);
    if (!conn.wanted) return;
    var proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    var ws;
    try {
      ws = new WebSocket(proto + '//' + location.host + '/api/v1/stream?token=' + encodeURIComponent(state.token));
    } catch (e) {
      scheduleReconnect();
      return;
    }
    conn.ws = ws;
    setConn(conn.attempt ? 'reconnecting' : 'connecting', conn.attempt ? 'Reconnecting…' : 'Connecting…');
    ws.onopen = function () {
      // The server checks the token and origin before the upgrade, so an
      // open socket is a live stream, even when a resume has nothing to
      // replay and no message follows.
      conn.attempt = 0;
      stopPolling();
      setConn('open', 'Live');
      // After a drop, resume from the last event seen: the hub replays what
      // was missed, or answers with a fresh snapshot. batch: the hub sends
      // everything of a flush interval (~50 ms) in one message.
      var msg = state.lastSeq > 0 ? { type: 'resume', after: state.lastSeq, events: EVENTS, batch: true } : { type: 'subscribe', events: EVENTS, batch: true };
      ws.send(JSON.stringify(msg));
    };
    ws.onmessage = function (ev) {
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (conn.ws !== ws) return;
      if (conn.attempt || $('conn-status').dataset.state !== 'open') {
        conn.attempt = 0;
        stopPolling();
        setConn('open', 'Live');
      }
      handleMessage(msg);
    };
    ws.onclose = function (ev) {
      if (conn.ws !== ws) return;
      conn.ws = null;
      if (!conn.wanted) return;
      if (ev.code === 1008) {
        // Policy: the token (or origin) was refused. Check the token before
        // retrying, so a revoked token asks for a new one instead of looping.
        api('GET', '/api/v1/state').then(function (snap) { applySnapshot(snap); scheduleReconnect(); }, function (err) {
          if (err.status === 401) askToken('That token is no longer accepted.');
          else scheduleReconnect();
        });
        return;
      }
      scheduleReconnect(ev.code === 4000 ? 'too slow' : '');
    };
  }

  function scheduleReconnect(why) {
    conn.attempt++;
    // Exponential backoff with jitter, 0.5 s to 30 s, so a restarted server
    // is not hit by every wall screen at once.
    var base = Math.min(30000, 500 * Math.pow(2, conn.attempt - 1));
    var delay = Math.round(base * (0.5 + Math.random() * 0.5));
    var until = Date.now() + delay;
    var tick = function () {
      var s = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      setConn('reconnecting', 'Disconnected' + (why ? ' (' + why + ')' : '') + ' · retry in ' + s + ' s');
    };
    tick();
    clearInterval(conn.countdown);
    conn.countdown = setInterval(tick, 1000);
    conn.timer = setTimeout(connect, delay);
    startPolling();
  }

  // While the stream is down the page still refreshes, more slowly.
  function startPolling() {
    if (conn.poll) return;
    conn.poll = setInterval(function () {
      api('GET', '/api/v1/state').then(applySnapshot).catch(function () {});
      loadAlerts();
    }, POLL_MS);
  }

  function stopPolling() {
    clearInterval(conn.poll);
    conn.poll = 0;
  }

  function disconnect() {
    conn.wanted = false;
    clearTimeout(conn.timer);
    clearInterval(conn.countdown);
    stopPolling();
    if (conn.ws) { var ws = conn.ws; conn.ws = null; ws.close(1000); }
    setConn('idle', 'Not connected');
  }

  function handleMessage(msg) {
    if (typeof msg.seq === 'number') {
      // A snapshot states where the stream now is (after a server restart
      // the numbers start again); events only move forward.
      if (msg.type === 'snapshot') state.lastSeq = msg.seq;
      else if (msg.seq > state.lastSeq) state.lastSeq = msg.seq;
    }
    switch (msg.type) {
      case 'batch':
        // Events in seq order, each as it would come on its own.
        if (Array.isArray(msg.events)) msg.events.forEach(handleMessage);
        break;
      case 'snapshot':
        applySnapshot(msg);
        loadAlerts(); // events may have been missed while away
        break;
      case 'reading': applyReading(msg); break;
      case 'status': applyStatus(msg); break;
      case 'alert': applyAlert(msg); break;
      case 'error': $('map-note').textContent = 'Stream: ' + (msg.message || msg.code); break;
    }
  }

  // ---------------------------------------------------------------- token

  function askToken(message) {
    disconnect();
    state.token = '';
    // Another identity starts clean: no half-typed notes or errors of the last.
    alertNodes.forEach(function (li) { li.remove(); });
    alertNodes.clear();
    invalidate('alerts');
    sessionStorage.removeItem(TOKEN_KEY);
    var err = $('token-error');
    err.textContent = message || '';
    err.hidden = !message;
    var dlg = $('token-dialog');
    if (!dlg.open) dlg.showModal();
    $('token-input').focus();
  }

  function start() {
    conn.wanted = true;
    setConn('connecting', 'Connecting…');
    api('GET', '/api/v1/state').then(function (snap) {
      applySnapshot(snap);
      loadAlerts();
      connect();
    }, function (err) {
      if (err.status === 401) { askToken('That token was not accepted.'); return; }
      $('map-note').textContent = 'Could not load the fleet: ' + err.message;
      loadAlerts();
      connect();
    });
  }

  function init() {
    canvas = $('map');
    ctx = canvas.getContext('2d');
    overlay = $('map-overlay');
    octx = overlay.getContext('2d');
    new ResizeObserver(resizeCanvas).observe(canvas.parentElement);
    resizeCanvas();
    canvas.addEventListener('mousemove', onMapMove);
    canvas.addEventListener('mouseleave', onMapLeave);
    canvas.addEventListener('click', onMapClick);
    $('device-close').addEventListener('click', deselect);
    document.addEventListener('keydown', function (ev) {
      if (ev.key === 'Escape' && state.selected && !$('token-dialog').open) deselect();
    });
    $('find-form').addEventListener('submit', function (ev) {
      ev.preventDefault();
      var q = $('find-input').value.trim().toLowerCase();
      if (!q) return;
      var hit = state.devices.has(q) ? q : '';
      if (!hit) {
        state.devices.forEach(function (d) {
          if (!hit && (d.id.toLowerCase() === q || d.id.toLowerCase().indexOf(q) >= 0 || d.name.toLowerCase().indexOf(q) >= 0)) hit = d.id;
        });
      }
      if (hit) select(hit); else $('map-note').textContent = 'No device matches “' + q + '”.';
    });
    $('token-change').addEventListener('click', function () { askToken(''); });
    $('token-form').addEventListener('submit', function (ev) {
      ev.preventDefault();
      var t = $('token-input').value.trim();
      if (!t) return;
      state.token = t;
      sessionStorage.setItem(TOKEN_KEY, t);
      $('token-input').value = '';
      $('token-dialog').close();
      start();
    });
    $('token-dialog').addEventListener('cancel', function (ev) {
      if (!state.token) ev.preventDefault(); // nothing to show without a token
    });
    // "Last seen" ages while nothing else changes.
    setInterval(function () { if (panel.id) invalidate('panel'); }, 5000);

    // A link like /#token=... (printed by `make run`) signs in once; the
    // fragment never reaches a server and is removed from the address bar.
    var m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, '', location.pathname + location.search);
    }
    state.token = sessionStorage.getItem(TOKEN_KEY) || '';
    if (state.token) start(); else askToken('');
  }

  // A small handle for tests and for operators at the console.
  window.infrawatch = {
    select: select,
    refreshAlerts: loadAlerts,
    // handle takes a stream message as if the server had sent it (this
    // page only): for trying out how the page shows an event.
    handle: handleMessage,
    screenPos: function (id) {
      var d = state.devices.get(id);
      if (!d || d.x !== d.x) return null;
      var r = canvas.getBoundingClientRect();
      return { x: r.left + d.x, y: r.top + d.y };
    },
    stats: function () {
      return { devices: state.devices.size, alerts: state.alerts.size, lastSeq: state.lastSeq, connected: !!conn.ws, frameMs: lastFrameMs };
    }
  };

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
