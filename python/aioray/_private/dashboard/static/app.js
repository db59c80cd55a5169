// The aioray dashboard: one page, a view per URL hash (#/, #/actors, #/tasks, #/tasks/ID, #/jobs,
// #/logs, #/timeline), each drawn from the JSON API. The DOM is built with createElement and
// textContent only: cluster data (task names, log lines) never becomes markup.
'use strict';

const REFRESH_MS = 2000;
let auth = {authorized: false, routes: []};
let viewToken = 0; // bumped on navigation: a view's late answers and refresh timers then stop
let streamAbort = null;
let lastData = null; // what the current view drew last: a refresh with the same answer redraws nothing

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path) {
  const resp = await fetch(path, {credentials: 'same-origin', headers: {Accept: 'application/json'}});
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) throw new ApiError(resp.status, (body && body.error) || `${resp.status} ${resp.statusText}`);
  return body;
}

function bytes(n) {
  if (n === null || n === undefined) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

function num(x) { return Number.isInteger(x) ? String(x) : Number(x).toFixed(2).replace(/\.?0+$/, ''); }

// Memory resources are bytes; the others are counts.
function amount(name, x) { return name.includes('memory') ? bytes(x) : num(x); }

function when(ms) {
  if (!ms) return '';
  return new Date(ms).toLocaleString();
}

function short(id) { return id ? id.slice(0, 12) : ''; }

function table(columns, rows, empty) {
  if (!rows.length) return h('p', {class: 'empty', text: empty || 'Nothing yet.'});
  return h('table', {},
    h('thead', {}, h('tr', {}, columns.map(c => h('th', {text: c[0]})))),
    h('tbody', {}, rows.map(r => h('tr', {}, columns.map(c => {
      const v = c[1](r);
      return h('td', {}, v instanceof Node ? v : (v === null || v === undefined ? '' : String(v)));
    })))));
}

function link(href, text, attrs) { return h('a', Object.assign({href, text}, attrs || {})); }

function meter(used, total) {
  const pct = total > 0 ? Math.min(100, 100 * used / total) : 0;
  const fill = h('span', {class: 'fill'});
  fill.style.width = `${pct.toFixed(1)}%`;
  return h('span', {class: 'meter', title: `${pct.toFixed(1)}%`}, fill);
}

function setMain(...children) {
  const main = document.getElementById('main');
  main.replaceChildren(...children);
}

function showError(err) {
  if (err instanceof ApiError && err.status === 401) return loginNeeded();
  setMain(h('p', {class: 'error', role: 'alert', text: String(err.message || err)}));
}

function loginNeeded() {
  const next = location.pathname + location.hash;
  setMain(h('section', {class: 'login-needed'},
    h('h2', {text: 'The cluster token is needed here'}),
    h('p', {}, 'The overview is public; actors, tasks, jobs, logs and the timeline need the cluster\'s token. ',
      link(`/login?next=${encodeURIComponent(next)}`, 'Log in'), ' with it.')));
}

function drawAuth() {
  const el = document.getElementById('auth');
  if (auth.authorized) {
    el.replaceChildren(h('span', {class: 'ok', text: 'logged in'}), ' ',
      h('form', {method: 'post', action: '/logout', class: 'inline'}, h('button', {type: 'submit', text: 'Log out'})));
  } else {
    el.replaceChildren(link(`/login?next=${encodeURIComponent(location.pathname + location.hash)}`, 'Log in', {id: 'login-link'}));
  }
}

// Whether `data` is what the view drew last (then it keeps its DOM: selections, focus, scrolling).
function unchanged(data) {
  const text = JSON.stringify(data);
  if (text === lastData) return true;
  lastData = text;
  return false;
}

// Runs `draw` now and every REFRESH_MS while the view is still the current one.
function refreshing(draw) {
  const mine = viewToken;
  const tick = async () => {
    if (mine !== viewToken) return;
    try {
      await draw();
    } catch (err) {
      if (mine !== viewToken) return;
      showError(err);
      lastData = null; // the next answer redraws the view
      if (err instanceof ApiError && (err.status === 401 || err.status === 404 || err.status === 400)) return;
      // Others (the GCS restarting: 503) pass: keep asking.
    }
    if (mine === viewToken) setTimeout(tick, REFRESH_MS);
  };
  tick();
}

// -- views ------------------------------------------------------------------------------------------
function overview() {
  refreshing(async () => {
    const mine = viewToken;
    const s = await api('/api/cluster_status');
    if (mine !== viewToken) return;
    delete s.time;
    if (unchanged(s)) return;
    const totals = Object.keys(s.resources_total).sort().map(k =>
      h('li', {}, `${k}: ${amount(k, s.resources_total[k] - (s.resources_available[k] || 0))} / ${amount(k, s.resources_total[k])} used`));
    setMain(
      h('h2', {text: 'Cluster'}),
      h('p', {}, `GCS at ${s.gcs_address}; ${s.alive_nodes} live node(s) of ${s.nodes.length}.`),
      h('ul', {class: 'totals'}, totals),
      h('h2', {text: 'Nodes'}),
      table([
        ['Node', n => h('code', {class: 'node-id', title: n.node_id, text: n.node_id})],
        ['Address', n => n.address + (n.is_head ? ' (head)' : '')],
        ['State', n => h('span', {class: n.alive ? 'state-ALIVE' : 'state-DEAD', text: n.alive ? 'ALIVE' : 'DEAD'})],
        ['Resources (used / total)', n => h('ul', {class: 'res'}, Object.keys(n.resources_total).sort().map(k =>
          h('li', {}, `${k} ${amount(k, n.resources_total[k] - (n.resources_available[k] || 0))} / ${amount(k, n.resources_total[k])}`)))],
        ['Object store', n => h('span', {}, meter(n.store_used, n.store_capacity),
          ` ${bytes(n.store_used)} / ${bytes(n.store_capacity)}, ${n.store_objects} object(s)`)],
        ['Spilled', n => `${bytes(n.spilled_bytes)} on disk (${bytes(n.spilled_total)} written, ${bytes(n.restored_bytes)} restored)`],
        ['Workers', n => n.num_workers],
        ['Logs', n => (n.alive ? link(`#/logs?node=${n.node_id}`, 'logs') : '')],
      ], s.nodes, 'No nodes.'));
  });
}

function protectedView(draw) {
  if (!auth.authorized) { loginNeeded(); return; }
  refreshing(draw);
}

function actorsView() {
  protectedView(async () => {
    const mine = viewToken;
    const data = await api('/api/v0/actors?limit=1000');
    if (mine !== viewToken || unchanged(data)) return;
    setMain(h('h2', {text: 'Actors'}), table([
      ['Actor', a => h('code', {class: 'actor-id', text: a.actor_id})],
      ['Class', a => h('span', {class: 'class-name', text: a.class_name})],
      ['Name', a => a.name],
      ['State', a => h('span', {class: `state-${a.state}`, text: a.state})],
      ['Node', a => h('code', {title: a.node_id || '', text: short(a.node_id)})],
      ['PID', a => a.pid],
      ['Restarts', a => a.num_restarts],
      ['Died of', a => (a.death_cause ? `${a.death_cause.error_type}: ${a.death_cause.error_message}` : '')],
      ['Logs', a => (a.node_id && a.pid ? link(`#/logs?node=${a.node_id}&pid=${a.pid}`, 'logs') : '')],
    ], data.result, 'No actors.'));
  });
}

function tasksView(params) {
  const state = params.get('state') || '';
  protectedView(async () => {
    const mine = viewToken;
    const q = state ? `&state=${encodeURIComponent(state)}` : '';
    const data = await api(`/api/v0/tasks?limit=1000${q}`);
    if (mine !== viewToken || unchanged(data)) return;
    const states = ['', 'PENDING_ARGS_AVAIL', 'PENDING_NODE_ASSIGNMENT', 'SUBMITTED_TO_WORKER', 'RUNNING', 'FINISHED', 'FAILED'];
    const pick = h('select', {id: 'state-filter', onchange: e => { location.hash = e.target.value ? `#/tasks?state=${e.target.value}` : '#/tasks'; }},
      states.map(s => h('option', {value: s, selected: s === state, text: s || 'any state'})));
    setMain(h('h2', {text: 'Tasks'}), h('p', {}, 'State: ', pick, ` ${data.result.length} attempt(s) shown, newest last.`),
      table([
        ['Task', t => link(`#/tasks/${t.task_id}`, t.task_id, {class: 'task-link'})],
        ['Attempt', t => t.attempt_number],
        ['Name', t => t.name],
        ['Type', t => t.type],
        ['State', t => h('span', {class: `state-${t.state}`, text: t.state})],
        ['Node', t => h('code', {title: t.node_id || '', text: short(t.node_id)})],
        ['Worker PID', t => t.worker_pid],
        ['Error', t => t.error_type],
      ], data.result, 'No tasks yet.'));
  });
}

function eventFields(e) {
  return Object.keys(e).filter(k => !['type', 'time', 'node_id'].includes(k))
    .map(k => `${k}=${typeof e[k] === 'object' ? JSON.stringify(e[k]) : e[k]}`).join(' ');
}

function taskView(taskId) {
  protectedView(async () => {
    const mine = viewToken;
    const data = await api(`/api/v0/tasks/${encodeURIComponent(taskId)}`);
    if (mine !== viewToken || unchanged(data)) return;
    const parts = [h('h2', {}, 'Task ', h('code', {text: taskId}))];
    for (const a of data.attempts) {
      parts.push(h('h3', {text: `${a.name} · attempt ${a.attempt_number} · ${a.state}`}));
      if (a.error_message) parts.push(h('pre', {class: 'error', text: a.error_message}));
      const t0 = a.events.length ? a.events[0].time : 0;
      parts.push(table([
        ['Event', e => h('span', {class: 'event-type', text: e.type})],
        ['Time', e => new Date(e.time * 1000).toISOString()],
        ['+ms', e => ((e.time - t0) * 1000).toFixed(1)],
        ['Node', e => h('code', {title: e.node_id || '', text: short(e.node_id)})],
        ['Fields', e => eventFields(e)],
      ], a.events, 'No events.'));
    }
    setMain(...parts);
  });
}

function jobsView() {
  protectedView(async () => {
    const mine = viewToken;
    const data = await api('/api/v0/jobs?limit=1000');
    let submitted = null;
    if (auth.routes.includes('GET /api/jobs/')) submitted = await api('/api/jobs/');
    if (mine !== viewToken || unchanged([data, submitted])) return;
    const parts = [h('h2', {text: 'Jobs'}), table([
      ['Job', j => h('code', {class: 'job-id', text: j.job_id})],
      ['Type', j => j.type],
      ['Status', j => h('span', {class: `state-${j.status}`, text: j.status})],
      ['Submission', j => j.submission_id],
      ['Entrypoint', j => j.entrypoint],
      ['Driver', j => (j.driver_info ? `pid ${j.driver_info.pid} at ${j.driver_info.node_ip_address}` : '')],
      ['Started', j => when(j.start_time)],
      ['Ended', j => when(j.end_time)],
    ], data.result, 'No jobs.')];
    if (Array.isArray(submitted)) {
      parts.push(h('h2', {text: 'Submitted jobs'}), table([
        ['Submission', j => j.submission_id],
        ['Status', j => h('span', {class: `state-${j.status}`, text: j.status})],
        ['Entrypoint', j => j.entrypoint],
        ['Message', j => j.message],
      ], submitted, 'No submitted jobs.'));
    }
    setMain(...parts);
  });
}

function logsView(params) {
  const node = params.get('node') || '';
  const pid = params.get('pid') || '';
  const file = params.get('file') || '';
  if (!auth.authorized) { loginNeeded(); return; }
  const mine = viewToken;
  (async () => {
    const status = await api('/api/cluster_status');
    const alive = status.nodes.filter(n => n.alive);
    const chosen = node || (alive.find(n => n.is_head) || alive[0] || {}).node_id || '';
    const pick = h('select', {id: 'node-pick', onchange: e => { location.hash = `#/logs?node=${e.target.value}`; }},
      alive.map(n => h('option', {value: n.node_id, selected: n.node_id === chosen, text: `${short(n.node_id)} ${n.address}${n.is_head ? ' (head)' : ''}`})));
    const parts = [h('h2', {text: 'Logs'}), h('p', {}, 'Node: ', pick, pid ? ` worker pid ${pid}` : '')];
    if (!chosen) { if (mine === viewToken) setMain(...parts, h('p', {class: 'empty', text: 'No live node.'})); return; }
    const listing = await api(`/api/v0/logs?node_id=${chosen}`);
    if (mine !== viewToken) return;
    const files = listing.files.filter(f => !pid || f.name.endsWith(`-${pid}.out`) || f.name.endsWith(`-${pid}.err`));
    parts.push(table([
      ['File', f => link(`#/logs?node=${chosen}&file=${encodeURIComponent(f.name)}${pid ? `&pid=${pid}` : ''}`, f.name, {class: 'log-file'})],
      ['Size', f => bytes(f.size)],
      ['Modified', f => when(f.mtime * 1000)],
    ], files, 'No log files.'));
    const out = h('pre', {id: 'log-content', class: 'log'});
    if (file) {
      const follow = h('input', {type: 'checkbox', id: 'follow'});
      follow.addEventListener('change', () => readLog(chosen, file, out, follow.checked, mine));
      parts.push(h('h3', {}, h('code', {text: file}), ' ', h('label', {}, follow, ' follow')), out);
    }
    setMain(...parts);
    if (file) readLog(chosen, file, out, false, mine);
  })().catch(err => { if (mine === viewToken) showError(err); });
}

async function readLog(node, file, out, follow, mine) {
  if (streamAbort) streamAbort.abort();
  const ctl = new AbortController();
  streamAbort = ctl;
  out.textContent = '';
  const url = `/api/v0/logs/file?node_id=${node}&filename=${encodeURIComponent(file)}&lines=1000${follow ? '&follow=1' : ''}`;
  try {
    const resp = await fetch(url, {credentials: 'same-origin', signal: ctl.signal});
    if (!resp.ok) {
      let msg = `${resp.status}`;
      try { msg = (await resp.json()).error; } catch (e) { /* not JSON */ }
      out.textContent = msg;
      return;
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const {done, value} = await reader.read();
      if (done || mine !== viewToken) break;
      out.textContent += decoder.decode(value, {stream: true});
      out.dataset.loaded = 'true';
    }
    out.dataset.loaded = 'true';
  } catch (err) {
    if (err.name !== 'AbortError') out.textContent += `\n[${err.message}]`;
  }
}

function timelineView() {
  if (!auth.authorized) { loginNeeded(); return; }
  const mine = viewToken;
  setMain(h('h2', {text: 'Timeline'}), h('p', {text: 'Reading the task events…'}));
  (async () => {
    const events = await api('/api/v0/tasks/timeline');
    if (mine !== viewToken) return;
    const slices = events.filter(e => e.ph === 'X');
    const names = {};
    for (const e of events) if (e.ph === 'M' && e.name === 'process_name') names[e.pid] = e.args.name;
    const t0 = slices.length ? Math.min(...slices.map(e => e.ts)) : 0;
    const t1 = slices.length ? Math.max(...slices.map(e => e.ts + e.dur)) : 1;
    const span = Math.max(1, t1 - t0);
    const lanes = {};
    for (const e of slices) (lanes[`${e.pid}/${e.tid}`] = lanes[`${e.pid}/${e.tid}`] || []).push(e);
    const chart = h('div', {class: 'chart', id: 'timeline-chart'}, Object.keys(lanes).sort().map(key => {
      const [pid, tid] = key.split('/');
      return h('div', {class: 'lane'}, h('span', {class: 'lane-name', text: `${names[pid] || pid} · ${tid}`}),
        h('span', {class: 'lane-track'}, lanes[key].map(e => {
          const bar = h('span', {class: `bar ${e.cname || ''}`, title: `${e.name} ${(e.dur / 1000).toFixed(2)} ms`});
          bar.style.left = `${(100 * (e.ts - t0) / span).toFixed(3)}%`;
          bar.style.width = `${Math.max(0.2, 100 * e.dur / span).toFixed(3)}%`;
          return bar;
        })));
    }));
    setMain(h('h2', {text: 'Timeline'}),
      h('p', {}, `${slices.length} task execution(s) over ${(span / 1e6).toFixed(3)} s. `,
        link('/api/v0/tasks/timeline?download=1', 'Download the Chrome trace (JSON)', {id: 'timeline-download', download: 'aioray-timeline.json'}),
        ', then open it in ', link('https://ui.perfetto.dev', 'Perfetto', {rel: 'noopener noreferrer', target: '_blank'}),
        ' or chrome://tracing.'),
      slices.length ? chart : h('p', {class: 'empty', text: 'No task has run yet.'}));
  })().catch(err => { if (mine === viewToken) showError(err); });
}

// -- navigation -------------------------------------------------------------------------------------
function route() {
  viewToken++;
  lastData = null;
  if (streamAbort) { streamAbort.abort(); streamAbort = null; }
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const page = path.split('/')[1] || 'overview';
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === page);
  drawAuth();
  document.body.dataset.page = page;
  if (path === '/' || path === '') return overview();
  if (path === '/actors') return actorsView();
  if (path === '/tasks') return tasksView(params);
  if (path.startsWith('/tasks/')) return taskView(decodeURIComponent(path.slice('/tasks/'.length)));
  if (path === '/jobs') return jobsView();
  if (path === '/logs') return logsView(params);
  if (path === '/timeline') return timelineView();
  setMain(h('p', {class: 'error', text: `No such page: ${hash}`}));
}

async function start() {
  try { auth = await api('/api/auth'); } catch (err) { auth = {authorized: false, routes: []}; }
  window.addEventListener('hashchange', route);
  route();
}

document.addEventListener('DOMContentLoaded', start);
