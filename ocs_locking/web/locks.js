/* The live page of ocs-locking: the site's locks and leases from the lock
 * registry, over the router's WebSocket (autobahn-browser, window.autobahn).
 *
 * - The table starts from the registry's `status` task, then follows its
 *   `ownership` feed: every message is drawn when it arrives (no timer
 *   between a change and the page). When the registry says the bus is
 *   verified, only messages its own session published are drawn.
 * - OCS tasks are called as OCSClient calls them: `<registry>.ops` with
 *   ('start', op, params), then ('wait', op). A privileged task gets the
 *   password as the `password` keyword of its 'start' call only; the page
 *   reads it from its input at submit, clears the input at once and keeps
 *   it nowhere. Nothing here writes to the console.
 * - Reservations use the lease procedures (`<registry>.lease.acquire`,
 *   renew, release): the secret lease_id comes in the reply to this page
 *   alone and stays in memory; the page renews its leases while it is open.
 *
 * The address's query string may name the realm, the address root, the
 * registry's instance-id and the WebSocket's path on this page's origin
 * (?realm=&root=&registry=&ws=/ws); the defaults are ocs_locking.web.DEFAULTS.
 */
(function () {
  'use strict';

  var query = new URLSearchParams(window.location.search);
  var CONFIG = {
    realm: query.get('realm') || 'test_realm',
    root: query.get('root') || 'observatory',
    registry: query.get('registry') || 'lock-registry',
    // a path on this page's own origin only: a link must not be able to send
    // the password typed here to another router
    ws: (window.location.protocol === 'https:' ? 'wss://' : 'ws://') + window.location.host +
        (/^\/[\w\-.\/]*$/.test(query.get('ws') || '') ? query.get('ws') : '/ws')
  };
  var REGISTRY = CONFIG.root + '.' + CONFIG.registry;
  var OPS = REGISTRY + '.ops';
  var FEED = REGISTRY + '.feeds.ownership';
  var CLIENT = 'ocs-locks page';
  var OCS_OK = 0;
  var HOUR = 3600;
  var RECENT = 3;             // earlier holders shown per lock

  var state = {
    session: null,
    rows: new Map(),          // lock -> row (+ _received: performance.now() ms)
    recent: new Map(),        // lock -> [{job, session_id, at}] newest first
    leases: {grants: [], waiting: [], bookings: [], received: 0},
    publisher: null,          // the registry's session, when the bus is verified
    busText: '',
    parts: null,              // a snapshot in parts: {seq, parts, got: Map, changes: []}
    changes: [],              // recent change messages, re-applied over an older status
    mine: new Map(),          // request_id -> {resources, lease_id, lease, timer}
    ignored: 0,
    refreshAt: 0,
    // seconds from each message's timestamp (the registry's clock) to the
    // end of its drawing (this browser's clock): the last 100
    latency: []
  };

  // -- pure helpers (window.ocsLocksPage for the tests) ---------------------

  function seconds(s) {
    if (typeof s !== 'number' || !isFinite(s)) return '';
    if (s < 0.01) return (s * 1000).toFixed(1) + ' ms';
    if (s < 1) return Math.round(s * 1000) + ' ms';
    if (s < 60) return s.toFixed(1) + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + Math.floor(s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  }

  function clock(t) {
    if (typeof t !== 'number' || !isFinite(t)) return '';
    return new Date(t * 1000).toLocaleTimeString([], {hour12: false});
  }

  function holderText(row) {
    if (!row || row.job === null || row.job === undefined) return '';
    return row.job + (row.session_id !== null && row.session_id !== undefined
      ? ' (session ' + row.session_id + ')' : '');
  }

  /* Spans [start, end] of lock rows of the history task (kind 'lock'),
   * clipped to [from, to]; an open span (end null) lasts until `to`. */
  function lockSpans(rows, from, to) {
    var out = [];
    (rows || []).forEach(function (r) {
      if (!r || r.kind !== 'lock' || typeof r.start !== 'number') return;
      var end = typeof r.end === 'number' ? r.end : to;
      if (end < from || r.start > to) return;
      var more = [r.outcome || (r.end == null ? 'open' : '')];
      if (r.lent > 0) more.push('lent ' + r.lent + 'x');
      if (r.gave_up > 0) more.push(r.gave_up + ' gave up');
      out.push({start: Math.max(r.start, from), end: Math.min(end, to), open: r.end == null,
                label: holderText(r) || String(r.job || '?'),
                outcome: more.filter(Boolean).join(', '), detail: r});
    });
    return out.sort(function (a, b) { return a.start - b.start; });
  }

  /* Spans of a resource's leases from audit rows (grant/regrant opens a
   * token's span; release, force_release, expire end it), clipped to
   * [from, to]. An end without its grant in the rows starts at `from`; a
   * grant not ended lasts until `to`. */
  var OPENS = {grant: 1, regrant: 1};
  var ENDS = {release: 'released', force_release: 'revoked', expire: 'expired'};
  function leaseSpans(rows, from, to) {
    var open = new Map(), out = [];
    var audit = (rows || []).filter(function (r) {
      return r && typeof r.at === 'number' && (r.kind === undefined || r.kind === 'lease');
    }).sort(function (a, b) { return a.at - b.at; });
    audit.forEach(function (r) {
      var key = r.resource + '#' + r.token;
      if (OPENS[r.action] && r.ok !== false) {
        if (!open.has(key)) open.set(key, {start: r.at, owner: r.owner, token: r.token});
      } else if (ENDS[r.action] && r.ok !== false) {
        var o = open.get(key) || {start: from, owner: r.owner, token: r.token};
        open.delete(key);
        out.push({start: o.start, end: r.at, open: false, outcome: ENDS[r.action],
                  label: (o.owner || r.owner || '?') + ' (token ' + r.token + ')', detail: r});
      }
    });
    open.forEach(function (o) {
      out.push({start: o.start, end: to, open: true, outcome: 'held',
                label: (o.owner || '?') + ' (token ' + o.token + ')', detail: o});
    });
    return out.filter(function (s) { return s.end >= from && s.start <= to; })
      .map(function (s) {
        return Object.assign({}, s, {start: Math.max(s.start, from), end: Math.min(s.end, to)});
      }).sort(function (a, b) { return a.start - b.start; });
  }


  // -- the DOM --------------------------------------------------------------

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function say(text, bad) {
    var m = $('message');
    m.textContent = text;
    m.classList.toggle('bad', !!bad);
  }

  function setConn(which, text) {
    var c = $('conn');
    c.dataset.state = which;
    c.textContent = text;
  }

  function button(action, target, text) {
    return el('button', {type: 'button', 'data-action': action, 'data-target': target}, text);
  }

  // one row per key, kept across updates (buttons stay where they are)
  function syncRows(tbody, keys, attr, build, fill) {
    var have = new Map();
    Array.prototype.forEach.call(tbody.rows, function (tr) {
      have.set(tr.getAttribute(attr), tr);
    });
    keys.forEach(function (key, i) {
      var tr = have.get(key);
      if (!tr) {
        tr = build(key);
        tr.setAttribute(attr, key);
      }
      have.delete(key);
      fill(tr, key);
      if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
    });
    have.forEach(function (tr) { tr.remove(); });
  }

  var LOCK_CELLS = ['lock', 'holder', 'held', 'waiters', 'agent', 'flags', 'actions'];
  var LOCK_LABELS = ['Lock', 'Holder', 'Held for', 'Waiters', 'Agent', 'Flags', ''];

  function buildCells(names, labels) {
    var tr = el('tr');
    names.forEach(function (name, i) {
      tr.appendChild(el('td', {'class': name, 'data-label': labels[i]}));
    });
    return tr;
  }

  function cell(tr, name) { return tr.querySelector('td.' + name); }

  function heldFor(row, now) {
    if (typeof row.held_for !== 'number' || row.job == null) return null;
    return row.held_for + (now - row._received) / 1000;
  }

  function agentState(row) {
    if (row.alive === false) return 'stale';
    if (row.closed) return 'closing';
    return 'alive';
  }

  function fillLock(tr, key) {
    var row = state.rows.get(key), now = performance.now();
    cell(tr, 'lock').textContent = key;
    var holder = cell(tr, 'holder');
    holder.textContent = holderText(row) || 'free';
    holder.classList.toggle('free', !holderText(row));
    // earlier holds (when each ended, on this browser's clock), not the current holder's
    var recent = (state.recent.get(key) || []).filter(function (h) {
      return holderText(h) !== holderText(row);
    });
    if (recent.length) {
      holder.appendChild(el('span', {'class': 'recent'}, 'recently: ' + recent.map(function (h) {
        return holderText(h) + ' until ' + clock(h.at);
      }).join(', ')));
    }
    cell(tr, 'held').textContent = seconds(heldFor(row, now));
    var waiters = cell(tr, 'waiters');
    waiters.textContent = String(row.waiters || 0);
    if (row.queue && row.queue.length) {
      var ol = el('ol', {'class': 'queue'});
      row.queue.forEach(function (q) {
        ol.appendChild(el('li', {}, holderText(q) + (typeof q.waited_for === 'number'
          ? ' waited ' + seconds(q.waited_for) : '')));
      });
      waiters.appendChild(ol);
    }
    var agent = cell(tr, 'agent');
    agent.textContent = row.agent + ' ' + agentState(row);
    tr.dataset.agentState = agentState(row);
    var flags = cell(tr, 'flags');
    flags.textContent = '';
    flagSpans(flags, Array.isArray(row.flags) ? row.flags : []);
    var actions = cell(tr, 'actions');
    if (!actions.firstChild) {
      actions.appendChild(button('why', key, 'why'));
      actions.appendChild(button('history', key, 'history'));
    }
  }

  function renderLocks() {
    var keys = Array.from(state.rows.keys()).sort();
    syncRows($('locks').tBodies[0], keys, 'data-lock',
             function () { return buildCells(LOCK_CELLS, LOCK_LABELS); }, fillLock);
    $('locks-empty').hidden = keys.length > 0;
    $('locks-count').textContent = keys.length ? '(' + keys.length + ')' : '';
  }

  var LEASE_CELLS = ['resource', 'owner', 'token', 'left', 'queue', 'note', 'actions'];
  var LEASE_LABELS = ['Resource', 'Owner', 'Token', 'Left', 'Queue', 'Note', ''];

  function grantsByResource() {
    var m = new Map();
    state.leases.grants.forEach(function (g) {
      if (g && typeof g.resource === 'string') m.set(g.resource, g);
    });
    return m;
  }

  function mineFor(grant) {
    return grant && state.mine.get(grant.request_id);
  }

  var EXPIRING_FRACTION = 0.25;    // ocs_locking.flags.EXPIRING_FRACTION

  /* A lease's flags: the registry's, and 'expiring' counted down here too
   * (less than a quarter of its lease left), so it shows between messages. */
  function leaseFlags(g, left) {
    var flags = (Array.isArray(g.flags) ? g.flags : []).map(String);
    if (flags.indexOf('expiring') < 0 && typeof g.lease === 'number' && g.lease > 0 &&
        typeof left === 'number' && left < EXPIRING_FRACTION * g.lease) {
      flags.push('expiring');
    }
    return flags;
  }

  function flagSpans(td, flags) {
    flags.forEach(function (f) {
      td.appendChild(el('span', {'class': 'flag flag-' + String(f).replace(/\W/g, '')},
                        String(f)));
    });
  }

  function timeLeft(g, now) {
    return typeof g.expires_in === 'number'
      ? Math.max(0, g.expires_in - (now - state.leases.received) / 1000) : null;
  }

  function fillLeft(td, g, now) {
    var left = timeLeft(g, now);
    td.textContent = seconds(left) + ' ';
    flagSpans(td, leaseFlags(g, left));
  }

  function fillLease(tr, key, grants) {
    var g = (grants || grantsByResource()).get(key), now = performance.now();
    var queue = state.leases.waiting.filter(function (w) {
      return (w.resources || []).indexOf(key) >= 0;
    }).length;
    cell(tr, 'resource').textContent = key + (g.tree ? '/**' : '');
    cell(tr, 'owner').textContent = g.owner + (mineFor(g) ? ' (this page)' : '');
    cell(tr, 'token').textContent = String(g.token);
    fillLeft(cell(tr, 'left'), g, now);
    cell(tr, 'queue').textContent = String(queue);
    cell(tr, 'note').textContent = g.note || '';
    var mine = !!mineFor(g);
    tr.dataset.mine = mine ? 'yes' : 'no';
    var actions = cell(tr, 'actions');
    if (actions.dataset.mine !== String(mine)) {
      actions.textContent = '';
      actions.dataset.mine = String(mine);
      actions.appendChild(button('why', key, 'why'));
      actions.appendChild(button('history', key, 'history'));
      actions.appendChild(mine ? button('release', key, 'release')
                               : button('force', key, 'force-release'));
    }
  }

  function renderLeases() {
    var grants = grantsByResource(), keys = Array.from(grants.keys()).sort();
    syncRows($('leases').tBodies[0], keys, 'data-resource',
             function () { return buildCells(LEASE_CELLS, LEASE_LABELS); },
             function (tr, key) { fillLease(tr, key, grants); });
    $('leases-empty').hidden = keys.length > 0;
    var ul = $('waiting');
    ul.textContent = '';
    state.leases.waiting.forEach(function (w) {
      ul.appendChild(el('li', {}, 'waiting: ' + w.owner + ' for ' +
        (w.resources || []).join(', ') + ' (position ' + w.position + ', gives up ' +
        clock(w.deadline) + ')'));
    });
  }

  // -- the calendar: bookings from the leases message ---------------------------

  var BOOKING_CELLS = ['id', 'resources', 'owner', 'start', 'end', 'when', 'state', 'note'];
  var BOOKING_LABELS = ['Booking', 'Resources', 'Owner', 'Start (UTC)', 'End (UTC)', 'When',
                        'State', 'Note'];

  function utcText(t) {
    if (typeof t !== 'number' || !isFinite(t)) return '';
    return new Date(t * 1000).toISOString().replace('T', ' ').slice(0, 19);
  }

  /* "in 1 h 2 min" / "ends in 5 min 3 s": counted from the registry's own
   * starts_in / ends_in (its clock) and this page's clock since the message. */
  function bookingWhen(b, now) {
    var gone = (now - state.leases.received) / 1000;
    var start = b.starts_in - gone, end = b.ends_in - gone;
    if (typeof b.starts_in !== 'number') return '';
    if (start > 0) return 'in ' + seconds(start);
    return end > 0 ? 'ends in ' + seconds(end) : 'ended';
  }

  function fillBooking(tr, key, byId) {
    var b = byId.get(key), now = performance.now();
    cell(tr, 'id').textContent = String(b.booking_id);
    cell(tr, 'resources').textContent = (b.resources || []).join(', ') + (b.tree ? '/**' : '');
    cell(tr, 'owner').textContent = b.owner;
    cell(tr, 'start').textContent = utcText(b.start);
    cell(tr, 'start').title = new Date(b.start * 1000).toString();
    cell(tr, 'end').textContent = utcText(b.end);
    cell(tr, 'end').title = new Date(b.end * 1000).toString();
    cell(tr, 'when').textContent = bookingWhen(b, now);
    cell(tr, 'state').textContent = b.state;
    cell(tr, 'note').textContent = b.note || '';
    tr.dataset.state = b.state;
  }

  function renderBookings() {
    var byId = new Map();
    (state.leases.bookings || []).forEach(function (b) {
      if (b && typeof b.booking_id === 'number') byId.set(String(b.booking_id), b);
    });
    var keys = Array.from(byId.keys());      // by start, as the registry sent them
    syncRows($('bookings').tBodies[0], keys, 'data-booking',
             function () { return buildCells(BOOKING_CELLS, BOOKING_LABELS); },
             function (tr, key) { fillBooking(tr, key, byId); });
    $('bookings-empty').hidden = keys.length > 0;
  }

  // the clocks that count on between messages: held for, time left
  function tick() {
    var now = performance.now();
    Array.prototype.forEach.call($('locks').tBodies[0].rows, function (tr) {
      var row = state.rows.get(tr.getAttribute('data-lock'));
      if (row) cell(tr, 'held').textContent = seconds(heldFor(row, now));
    });
    var grants = grantsByResource();
    Array.prototype.forEach.call($('leases').tBodies[0].rows, function (tr) {
      var g = grants.get(tr.getAttribute('data-resource'));
      if (g) fillLeft(cell(tr, 'left'), g, now);
    });
    Array.prototype.forEach.call($('bookings').tBodies[0].rows, function (tr) {
      var b = (state.leases.bookings || []).find(function (x) {
        return String(x.booking_id) === tr.getAttribute('data-booking');
      });
      if (b) cell(tr, 'when').textContent = bookingWhen(b, now);
    });
  }

  // -- the table from the feed ----------------------------------------------

  function noteHolder(row, at) {
    var old = state.rows.get(row.lock);
    if (!old || old.job == null) return;
    if (old.job === row.job && old.session_id === row.session_id) return;
    var list = state.recent.get(row.lock) || [];
    list.unshift({job: old.job, session_id: old.session_id, at: at});
    state.recent.set(row.lock, list.slice(0, RECENT));
  }

  function putRows(rows, received) {
    var at = Date.now() / 1000;
    rows.forEach(function (row) {
      if (!row || typeof row.lock !== 'string') return;
      noteHolder(row, at);
      state.rows.set(row.lock, Object.assign({}, row, {_received: received}));
    });
  }

  function applyChange(msg, received) {
    (msg.removed || []).forEach(function (k) { state.rows.delete(k); state.recent.delete(k); });
    putRows(msg.rows || [], received);
  }

  function replaceRows(rows, received) {
    var keep = new Set(rows.map(function (r) { return r && r.lock; }));
    Array.from(state.rows.keys()).forEach(function (k) {
      if (!keep.has(k)) { state.rows.delete(k); state.recent.delete(k); }
    });
    putRows(rows, received);
  }

  function setLeases(block, received) {
    // (a block without bookings, the status task's, keeps the last calendar)
    var bookings = Array.isArray(block.bookings) ? block.bookings : state.leases.bookings;
    state.leases = {grants: Array.isArray(block.grants) ? block.grants : [],
                    waiting: Array.isArray(block.waiting) ? block.waiting : [],
                    bookings: bookings || [], received: received};
  }

  function onMessage(msg, received) {
    if (!msg || typeof msg !== 'object') return false;
    if (msg.kind === 'leases') {
      setLeases(msg, received);
      renderLeases();
      renderBookings();
      return true;
    }
    if (msg.kind === 'change') {
      state.changes.push(msg);
      if (state.changes.length > 50) state.changes.shift();
      if (state.parts) state.parts.changes.push(msg);
      applyChange(msg, received);
      renderLocks();
      return true;
    }
    if (msg.kind === 'snapshot') {
      var parts = typeof msg.parts === 'number' ? msg.parts : 1;
      if (parts <= 1) {
        state.parts = null;
        replaceRows(msg.rows || [], received);
      } else {
        if (!state.parts || state.parts.seq !== msg.seq) {
          state.parts = {seq: msg.seq, parts: parts, got: new Map(), changes: []};
        }
        state.parts.got.set(msg.part, msg.rows || []);
        if (state.parts.got.size < parts) return true;
        var all = [];
        for (var i = 0; i < parts; i++) all = all.concat(state.parts.got.get(i) || []);
        var later = state.parts.changes;
        state.parts = null;
        replaceRows(all, received);
        later.forEach(function (c) { applyChange(c, received); });
      }
      renderLocks();
      return true;
    }
    return false;
  }

  function onFeed(args, kwargs, details) {
    var received = performance.now();
    var data = args && args[0];
    if (!Array.isArray(data) || data.length !== 2) return;
    var publisher = details && details.publisher;
    if (state.publisher !== null && publisher !== state.publisher) {
      state.ignored += 1;     // not the registry's session: a forgery, or a new registry
      $('bus').textContent = (state.busText ? state.busText + '; ' : '') + 'ignored ' +
        state.ignored + ' ownership message(s) not from the registry\'s session';
      if (Date.now() > state.refreshAt) {
        state.refreshAt = Date.now() + 5000;
        loadStatus();
      }
      return;
    }
    if (onMessage(data[0], received) && typeof data[0].timestamp === 'number') {
      state.latency.push(Date.now() / 1000 - data[0].timestamp);
      if (state.latency.length > 100) state.latency.shift();
    }
  }

  // -- OCS tasks and lease procedures -----------------------------------------

  // the task's own message: the last one that is not ocs's 'Status is now "done".'
  function lastMessage(session) {
    var msgs = ((session && session.messages) || []).filter(function (m) {
      return Array.isArray(m) && !/^Status is now "/.test(String(m[1]));
    });
    return msgs.length ? String(msgs[msgs.length - 1][1]) : '';
  }

  /* Run the registry's task `op` as OCSClient does; resolves to its
   * session ({success, data, messages, ...}). `password` goes in the start
   * call only. A task already running (another client) is waited for, then
   * started again (at most 5 times; never a call with a password). */
  function runTask(op, params, password, tries) {
    var s = state.session;
    if (!s) return Promise.reject(new Error('not connected to the router'));
    var kw = password ? {password: password} : {};
    var privileged = !!password;
    password = null;
    return s.call(OPS, ['start', op, params || {}], kw).then(function (r) {
      kw = null;
      if (r[0] !== OCS_OK) {
        // a privileged call is not retried: its password is gone already
        if (/already in progress/.test(r[1]) && !privileged && (tries || 0) < 5) {
          return s.call(OPS, ['wait', op, {}], {timeout: 5}).then(function () {
            return runTask(op, params, null, (tries || 0) + 1);
          });
        }
        throw new Error(r[1]);
      }
      return s.call(OPS, ['wait', op, {}], {timeout: 60}).then(function (w) {
        if (w[0] !== OCS_OK) throw new Error(w[1]);
        return w[2];
      });
    }, function (e) {
      kw = null;
      throw e;
    });
  }

  function errorText(e) {
    if (e && e.error) {         // autobahn.Error: the URI and its text
      if (e.error === 'wamp.error.no_such_procedure') {
        return 'the registry ' + CONFIG.registry + ' is not running (no such agent on the router)';
      }
      return (e.args && e.args.length ? String(e.args[0]) : e.error);
    }
    return (e && e.message) || String(e);
  }

  function loadStatus() {
    return runTask('status', {}).then(function (session) {
      var data = session.data || {};
      var received = performance.now();
      var bus = data.bus || {};
      state.publisher = bus.verified && typeof bus.session === 'number' ? bus.session : null;
      state.busText = bus.verified ? '' : 'bus not verified: ' + (bus.reason || 'unknown');
      $('bus').textContent = state.busText;
      replaceRows(Array.isArray(data.locks) ? data.locks : [], received);
      state.changes.forEach(function (c) {
        if (typeof c.seq === 'number' && typeof data.seq === 'number' && c.seq > data.seq) {
          applyChange(c, received);
        }
      });
      if (data.leases) setLeases(data.leases, received);
      var paths = ((data.resources || {}).resources || []).map(function (r) { return r.path; });
      [['resources', paths], ['targets', Array.from(state.rows.keys()).sort().concat(paths)]]
        .forEach(function (pair) {
          var list = $(pair[0]);
          list.textContent = '';
          pair[1].forEach(function (v) { list.appendChild(el('option', {value: v})); });
        });
      renderLocks();
      renderLeases();
      setConn('live', 'live');
      document.querySelector('main').classList.remove('offline');
    }).catch(function (e) {
      setConn('error', 'no registry');
      say('Could not read the registry: ' + errorText(e), true);
    });
  }

  function leaseCall(name, kwargs) {
    var s = state.session;
    if (!s) return Promise.reject(new Error('not connected to the router'));
    return s.call(REGISTRY + '.lease.' + name, [], kwargs);
  }

  function reserve(form) {
    var resource = form.resource.value.trim();
    var lease = parseFloat(form.lease.value) || null;
    var kwargs = {resource: resource, owner: form.owner.value.trim(), timeout: 0,
                  note: form.note.value, client: CLIENT};
    if (lease) kwargs.lease = lease;
    return leaseCall('acquire', kwargs).then(function (r) {
      if (!r.ok) { say(r.message, true); return; }
      var d = r.data;
      var mine = {resources: Array.isArray(d.resource) ? d.resource : [d.resource],
                  lease_id: d.lease_id, lease: d.lease, timer: null};
      mine.timer = setInterval(function () { renew(d.request_id); },
                               Math.max(1000, mine.lease * 1000 / 3));
      state.mine.set(d.request_id, mine);
      say(r.message);
      renderLeases();
    }, function (e) { say('Reserve failed: ' + errorText(e), true); });
  }

  function renew(requestId) {
    var mine = state.mine.get(requestId);
    if (!mine) return;
    leaseCall('renew', {resource: mine.resources[0], lease_id: mine.lease_id,
                        lease: mine.lease, client: CLIENT}).then(function (r) {
      if (!r.ok) {
        forget(requestId);
        say('Lease on ' + mine.resources.join(', ') + ' lost: ' + r.message, true);
      }
    }, function () { /* the next renewal tries again */ });
  }

  function forget(requestId) {
    var mine = state.mine.get(requestId);
    if (mine) clearInterval(mine.timer);
    state.mine.delete(requestId);
    renderLeases();
  }

  function release(resource) {
    var g = grantsByResource().get(resource), mine = mineFor(g);
    if (!mine) { say('Not a lease of this page: ' + resource, true); return; }
    leaseCall('release', {resource: resource, lease_id: mine.lease_id, client: CLIENT})
      .then(function (r) {
        if (r.ok) forget(g.request_id);
        say(r.message, !r.ok);
      }, function (e) { say('Release failed: ' + errorText(e), true); });
  }

  function forceRelease(resource, reason, password) {
    return runTask('force_release', {resource: resource, reason: reason, client: CLIENT},
                   password).then(function (session) {
      say(lastMessage(session), !session.success);
    }, function (e) { say('Force-release refused: ' + errorText(e), true); });
  }

  // -- why and the timeline -----------------------------------------------------

  function showDetail(title, body) {
    $('detail-title').textContent = title;
    var b = $('detail-body');
    b.textContent = '';
    b.appendChild(body);
    $('detail').hidden = false;
  }

  function why(target) {
    showDetail('why ' + target, el('p', {'class': 'note'}, 'asking the registry...'));
    runTask('why', {target: target}).then(function (session) {
      var answer = (session.data || {}).why;
      var body;
      if (!session.success || !answer) {
        body = el('p', {'class': 'bad'}, lastMessage(session));
      } else {
        body = el('ul', {'class': 'why'});
        answer.lines.forEach(function (line) { body.appendChild(el('li', {}, line)); });
      }
      showDetail('why ' + target, body);
    }, function (e) { showDetail('why ' + target, el('p', {'class': 'bad'}, errorText(e))); });
  }

  function timeline(spans, from, to, empty) {
    var box = el('div', {'class': 'timeline-box'});
    if (!spans.length) {
      box.appendChild(el('p', {'class': 'note'}, empty));
      return box;
    }
    var bar = el('div', {'class': 'timeline', role: 'img',
                         'aria-label': spans.length + ' holds in the last hour'});
    var list = el('ol', {'class': 'spans'});
    spans.forEach(function (s) {
      var left = 100 * (s.start - from) / (to - from);
      var width = Math.max(0.3, 100 * (s.end - s.start) / (to - from));
      var span = el('div', {'class': 'span' + (s.open ? ' open' : ''),
                            title: s.label + ' ' + clock(s.start) + '-' + clock(s.end)});
      span.style.left = left.toFixed(3) + '%';
      span.style.width = Math.min(width, 100 - left).toFixed(3) + '%';
      bar.appendChild(span);
      list.appendChild(el('li', {}, clock(s.start) + '-' + (s.open ? 'now' : clock(s.end)) +
        ' ' + s.label + ' ' + seconds(s.end - s.start) + (s.outcome ? ' ' + s.outcome : '')));
    });
    box.appendChild(bar);
    var axis = el('div', {'class': 'axis'});
    ['-60 min', '-30 min', 'now'].forEach(function (t) { axis.appendChild(el('span', {}, t)); });
    box.appendChild(axis);
    box.appendChild(list);
    return box;
  }

  function history(target) {
    var isLock = state.rows.has(target);
    var title = 'the last hour of ' + target;
    showDetail(title, el('p', {'class': 'note'}, 'asking the registry...'));
    var params = {resource: target, since: HOUR, limit: 1000};
    var call = isLock ? runTask('history', Object.assign({kind: 'lock'}, params))
                      : runTask('history', params);
    call.then(function (session) {
      var to = session.start_time || Date.now() / 1000, from = to - HOUR;
      if (!session.success) {
        showDetail(title, el('p', {'class': 'bad'}, lastMessage(session)));
        return;
      }
      var rows = (session.data || {}).history || [];
      var spans = isLock ? lockSpans(rows, from, to) : leaseSpans(rows, from, to);
      showDetail(title, timeline(spans, from, to, isLock ? 'no holds of ' + target +
        ' in the last hour' : 'no leases of ' + target + ' in the last hour'));
    }, function (e) {
      var text = errorText(e);
      if (isLock && /unexpected values/.test(text)) text = 'no lock history on this registry';
      showDetail(title, el('p', {'class': 'note'}, text));
    });
  }

  // -- wiring -------------------------------------------------------------------

  var forceTarget = null;

  function onAction(ev) {
    var b = ev.target.closest('button[data-action]');
    if (!b) return;
    var target = b.getAttribute('data-target');
    var action = b.getAttribute('data-action');
    if (action === 'why') why(target);
    else if (action === 'history') history(target);
    else if (action === 'release') release(target);
    else if (action === 'force') {
      forceTarget = target;
      $('force-resource').textContent = target;
      $('force').showModal();
    }
  }

  function start() {
    $('locks').addEventListener('click', onAction);
    $('leases').addEventListener('click', onAction);
    $('detail-close').addEventListener('click', function () { $('detail').hidden = true; });
    $('lookup').addEventListener('submit', function (ev) {
      ev.preventDefault();
      var target = ev.target.target.value.trim();
      if (ev.submitter && ev.submitter.value === 'history') history(target);
      else why(target);
    });
    $('reserve').addEventListener('submit', function (ev) {
      ev.preventDefault();
      reserve(ev.target);
    });
    $('force-cancel').addEventListener('click', function () { $('force').close(); });
    // however the dialog closes (Cancel, Escape, submit), no password stays in it
    $('force').addEventListener('close', function () { $('force-form').password.value = ''; });
    $('force-form').addEventListener('submit', function (ev) {
      ev.preventDefault();
      var form = ev.target, password = form.password.value;
      form.password.value = '';       // never kept: gone from the page before the call
      $('force').close();
      forceRelease(forceTarget, form.reason.value, password);
      password = null;
    });
    setInterval(tick, 500);
    $('where').textContent = CONFIG.registry + ' in ' + CONFIG.realm;

    if (typeof autobahn === 'undefined') {
      setConn('error', 'no autobahn');
      say('autobahn.min.js is missing: run `make web` (see the operators guide)', true);
      return;
    }
    var connection = new autobahn.Connection({
      url: CONFIG.ws, realm: CONFIG.realm, max_retries: -1,
      initial_retry_delay: 1, max_retry_delay: 5, retry_delay_jitter: 0.1
    });
    connection.onopen = function (session) {
      state.session = session;
      setConn('connecting', 'reading');
      session.subscribe(FEED, onFeed).then(loadStatus, function (e) {
        setConn('error', 'refused');
        say('Cannot follow ' + FEED + ': ' + errorText(e), true);
      });
    };
    connection.onclose = function (reason) {
      state.session = null;
      document.querySelector('main').classList.add('offline');   // the table may be old
      setConn('down', reason === 'unreachable' ? 'router unreachable' : 'reconnecting');
      return false;             // keep retrying
    };
    connection.open();
  }

  // for the tests: the pure helpers, the state, and drawing a message as if
  // the feed had brought it
  window.ocsLocksPage = {lockSpans: lockSpans, leaseSpans: leaseSpans, seconds: seconds,
                         config: CONFIG, state: state, timeline: timeline,
                         draw: function (msg) { return onMessage(msg, performance.now()); }};

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
}());
