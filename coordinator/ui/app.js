// The coordinator's dashboard: one page, no build step, no framework.
// Data comes from the operator API (with the session cookie); one event
// stream (/v1/events/stream) tells the page that something changed, and
// the page re-reads what it shows. Changes go through the same API as
// spotctl, each with a request_id and the session's CSRF token.
'use strict';

const S = {
  session: null,        // {actor, role, csrf}
  groups: [], instances: [], agents: [], notices: [], savings: null,
  events: [],           // newest first, at most 200
  lastEventId: null,
  loadedAt: 0,          // ms the data was last read
  renderMs: 0,          // cost of the last read + render
  refreshing: false, dirty: false,
};

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? '').replace(/[&<>"']/g,
  (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const admin = () => S.session && S.session.role === 'admin';
const rid = (what) => `ui-${what}-${Date.now()}-${Math.random().toString(36).slice(2, 10)}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function ago(ms) {
  if (ms == null) return '—';
  return dur(Date.now() - ms) + ' ago';
}
function dur(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}
const pool = (t, az) => `${t}/${az}`;
// A live countdown: the ticker below rewrites every [data-deadline].
const countdown = (ms) => `<span class="countdown" data-deadline="${ms}">${dur(ms - Date.now())}</span>`;

class ApiError extends Error {
  constructor(status, body) {
    super(`${status} ${body.code || ''}: ${body.message || ''}`);
    this.status = status; this.body = body;
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET') headers['X-CSRF-Token'] = S.session ? S.session.csrf : '';
  const r = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch (_) { v = { message: text }; }
  if (r.status === 401 && path !== '/ui/login') { showLogin(); }
  if (!r.ok) throw new ApiError(r.status, v || {});
  return v;
}

function toast(msg, error) {
  const t = $('#toast');
  t.textContent = msg; t.className = error ? 'error' : ''; t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, error ? 12000 : 6000);
}

// ---- session ------------------------------------------------------------

function showLogin() {
  S.session = null;
  $('#login').hidden = false; $('#view').innerHTML = ''; $('#nav').hidden = true;
  $('#logout').hidden = true; $('#who').textContent = '';
}

async function start(session) {
  S.session = session;
  $('#login').hidden = true; $('#nav').hidden = false; $('#logout').hidden = false;
  $('#who').textContent = `${session.actor} (${session.role})`;
  $('#nav-zombies').hidden = false;
  document.body.dataset.role = session.role;
  stream();
  await refresh();
}

$('#login').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('#login-error').textContent = '';
  try {
    const s = await api('POST', '/ui/login', { token: $('#token').value });
    $('#token').value = '';
    await start(s);
  } catch (err) {
    $('#login-error').textContent = err.status === 401 ? 'Unknown or revoked token.' : String(err.message);
  }
});

$('#logout').addEventListener('click', async () => {
  try { await api('POST', '/ui/logout'); } catch (_) { /* the session may be gone already */ }
  showLogin();
});

// ---- live updates -------------------------------------------------------

// The audit log as Server-Sent Events, read with fetch so that every
// event name arrives and a reconnect resumes after the last id seen.
async function stream() {
  if (stream.running) return;
  stream.running = true;
  while (S.session) {
    try {
      const q = S.lastEventId != null ? `?after=${S.lastEventId}` : '';
      const r = await fetch(`/v1/events/stream${q}`, {
        credentials: 'same-origin', headers: { Accept: 'text/event-stream' },
      });
      if (r.status === 401) { showLogin(); break; }
      if (!r.ok) throw new Error(`stream: ${r.status}`);
      setLive(true);
      scheduleRefresh();
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          onBlock(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
    } catch (_) { /* reconnect below */ }
    setLive(false);
    await sleep(1000);
  }
  stream.running = false;
}

function setLive(on) {
  const l = $('#live');
  l.className = on ? 'live on' : 'live off';
  l.textContent = on ? 'live' : 'offline';
}

function onBlock(block) {
  let id = null, name = 'message', data = '';
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue; // keep-alive comment
    if (line.startsWith('id: ')) id = Number(line.slice(4));
    else if (line.startsWith('event: ')) name = line.slice(7);
    else if (line.startsWith('data: ')) data += line.slice(6);
  }
  if (id == null) return;
  S.lastEventId = id;
  let entry = null;
  try { entry = JSON.parse(data); } catch (_) { entry = { action: name, entity: '?' }; }
  S.events.unshift(entry);
  if (S.events.length > 200) S.events.length = 200;
  scheduleRefresh();
}

function scheduleRefresh() {
  if (S.refreshing) { S.dirty = true; return; }
  clearTimeout(scheduleRefresh.t);
  scheduleRefresh.t = setTimeout(refresh, 100);
}

async function refresh() {
  if (!S.session) return;
  S.refreshing = true;
  const t0 = performance.now();
  try {
    const [groups, instances, agents, notices, savings] = await Promise.all([
      api('GET', '/v1/groups'), api('GET', '/v1/instances'), api('GET', '/v1/agents'),
      api('GET', '/v1/notices'), api('GET', '/v1/savings'),
    ]);
    Object.assign(S, { groups, instances, agents, notices, savings, loadedAt: Date.now() });
    await render();
  } catch (e) {
    if (e.status !== 401) toast(`Could not read the fleet: ${e.message}`, true);
  } finally {
    S.renderMs = performance.now() - t0;
    document.body.dataset.renderMs = S.renderMs.toFixed(1);
    document.body.dataset.loadedAt = String(S.loadedAt);
    S.refreshing = false;
    if (S.dirty) { S.dirty = false; scheduleRefresh(); }
  }
}

window.addEventListener('hashchange', () => render());
setInterval(() => {
  for (const el of document.querySelectorAll('[data-deadline]')) {
    const left = Number(el.dataset.deadline) - Date.now();
    el.textContent = left > 0 ? dur(left) : 'now';
  }
}, 1000);

// ---- derived state ------------------------------------------------------

function index() {
  const inst = new Map(S.instances.map((i) => [i.instance_id, i]));
  const agentOf = new Map();
  for (const a of S.agents) if (a.status !== 'replaced') agentOf.set(a.instance_id, a);
  const members = new Map();
  for (const i of S.instances) {
    if (!members.has(i.group)) members.set(i.group, []);
    members.get(i.group).push(i);
  }
  const saving = new Map(((S.savings && S.savings.groups) || []).map((g) => [g.group, g]));
  return { inst, agentOf, members, saving };
}

// Interruptions in flight: a notice whose instance EC2 has not taken yet.
function emergencies(ix) {
  const out = [];
  for (const n of S.notices) {
    if (n.kind !== 'interruption') continue;
    const i = ix.inst.get(n.instance_id);
    if (!i || i.role === 'terminated' || i.ec2_state === 'terminated') continue;
    if (n.effective_at_ms != null && n.effective_at_ms < Date.now() - 60000) continue;
    const g = S.groups.find((x) => x.name === n.group);
    out.push({ n, i, g });
  }
  return out;
}

function renderBanner(ix) {
  const em = emergencies(ix);
  const b = $('#banner');
  b.hidden = em.length === 0;
  b.innerHTML = em.map(({ n, i, g }) => {
    const newPrimary = g && g.primary && g.primary !== n.instance_id
      ? `new PRIMARY <b class="new-primary">${esc(g.primary)}</b>`
      : (g && g.transition ? `failing over (${esc(g.transition.phase)})` : 'no new PRIMARY yet');
    const when = n.effective_at_ms != null ? `reclaimed in ${countdown(n.effective_at_ms)}` : 'reclaim time unknown';
    return `<div class="emergency" data-group="${esc(n.group)}">Interruption: group <a href="#/group/${encodeURIComponent(n.group)}">${esc(n.group)}</a>, ${esc(n.instance_id)} (now ${esc(i.role)}), ${when}; ${newPrimary}</div>`;
  }).join('');
}

// ---- views --------------------------------------------------------------

async function render() {
  if (!S.session) return;
  const ix = index();
  renderBanner(ix);
  const h = location.hash || '#/';
  const view = $('#view');
  if (h.startsWith('#/group/')) return renderGroup(decodeURIComponent(h.slice(8)), ix, view);
  if (h === '#/zombies') return renderZombies(view);
  if (h === '#/events') return renderEvents(view);
  return renderFleet(ix, view);
}

function agentCell(a) {
  if (!a) return '<span class="muted">no agent</span>';
  const st = a.status === 'online' ? `<span class="online">online</span>` : `<span class="offline">${esc(a.status)}</span>`;
  const health = a.status === 'online' && !a.healthy ? ' <span class="bad">unhealthy</span>' : '';
  return `${st}${health}`;
}

function renderFleet(ix, view) {
  const offline = S.agents.filter((a) => a.status === 'offline');
  const serving = S.groups.filter((g) => g.primary).length;
  const fleet = S.savings && S.savings.fleet_ratio != null ? `${(S.savings.fleet_ratio * 100).toFixed(1)} %` : '—';
  const rows = S.groups.map((g) => {
    const m = ix.members.get(g.name) || [];
    const p = g.primary ? ix.inst.get(g.primary) : null;
    const reps = m.filter((i) => i.role === 'replica' || i.role === 'launching');
    const t = g.transition;
    const tr = t ? `<span class="transition">${esc(t.phase)}${t.emergency ? ' (emergency)' : ''} → ${esc(t.candidate)}${t.deadline_ms ? ', deadline ' + countdown(t.deadline_ms) : ''}</span>` : '';
    const sv = ix.saving.get(g.name);
    const mode = [g.config.paused ? 'paused' : '', g.config.manual_replica ? 'manual replica' : '', `decisions ${g.config.decisions}`].filter(Boolean).join(', ');
    return `<tr data-group="${esc(g.name)}"><td><a href="#/group/${encodeURIComponent(g.name)}">${esc(g.name)}</a></td>`
      + `<td class="primary">${p ? `${esc(p.instance_id)}<br><span class="muted">${esc(pool(p.instance_type, p.availability_zone))}</span>` : '<span class="bad">none</span>'}</td>`
      + `<td>${p ? agentCell(ix.agentOf.get(p.instance_id)) : ''}</td>`
      + `<td>${reps.map((r) => `${esc(r.instance_id)} <span class="muted">${esc(r.role)}, ${esc(pool(r.instance_type, r.availability_zone))}</span> ${agentCell(ix.agentOf.get(r.instance_id))}`).join('<br>') || '<span class="muted">none</span>'}</td>`
      + `<td>${g.epoch}</td><td>${tr}</td><td class="muted">${esc(mode)}</td>`
      + `<td>${sv ? (sv.ratio * 100).toFixed(1) + ' %' : '—'}</td></tr>`;
  });
  view.innerHTML = `
    <div class="cards">
      <div class="card">groups<b id="n-groups">${S.groups.length}</b></div>
      <div class="card">PRIMARY serving<b>${serving}</b></div>
      <div class="card">agents offline<b class="${offline.length ? 'bad' : ''}">${offline.length}</b></div>
      <div class="card">savings vs on-demand<b id="fleet-savings">${fleet}</b></div>
    </div>
    <h2>Groups</h2>
    <table id="groups"><thead><tr><th>group</th><th>PRIMARY</th><th>agent</th><th>REPLICAs</th><th>epoch</th><th>transition</th><th>mode</th><th>savings</th></tr></thead>
    <tbody>${rows.join('')}</tbody></table>
    <h2>Offline agents</h2>
    ${offline.length ? `<table id="offline"><thead><tr><th>agent</th><th>instance</th><th>group</th><th>last heartbeat</th><th>role reported</th></tr></thead><tbody>${offline.map((a) => `<tr><td>${esc(a.agent_id)}</td><td>${esc(a.instance_id)}</td><td>${esc(a.group)}</td><td>${ago(a.last_heartbeat_ms)}</td><td>${esc(a.reported_role)}</td></tr>`).join('')}</tbody></table>` : '<p class="muted">none</p>'}`;
}

async function renderGroup(name, ix, view) {
  const g = S.groups.find((x) => x.name === name);
  if (!g) { view.innerHTML = `<p class="error">No group ${esc(name)}.</p>`; return; }
  const m = (ix.members.get(name) || []).filter((i) => i.role !== 'terminated');
  const hasVolumes = (g.config.data_volumes || []).length > 0;
  const [prices, switches, decisions, audit, volumes] = await Promise.all([
    api('GET', `/v1/groups/${encodeURIComponent(name)}/prices`).catch(() => null),
    api('GET', `/v1/groups/${encodeURIComponent(name)}/switches`).catch(() => []),
    api('GET', `/v1/groups/${encodeURIComponent(name)}/decisions?limit=50`).catch(() => []),
    api('GET', `/v1/audit?entity=${encodeURIComponent('group:' + name)}&action=commit&newest_first=true&limit=20`).catch(() => []),
    hasVolumes ? api('GET', `/v1/groups/${encodeURIComponent(name)}/volumes`).catch(() => null) : null,
  ]);
  if ((location.hash || '') !== `#/group/${encodeURIComponent(name)}` && (location.hash || '') !== `#/group/${name}`) return;
  const t = g.transition;
  const dis = admin() ? '' : 'disabled title="viewer token: read only"';
  const replicas = m.filter((i) => i.role === 'replica');
  const cost = prices && prices.cost;
  const failovers = audit;
  view.innerHTML = `
    <h1>Group ${esc(name)} <span class="muted">epoch ${g.epoch}</span></h1>
    ${t ? `<p class="transition" id="transition">${t.emergency ? 'Emergency failover' : 'Transition'}: ${esc(t.phase)}, ${esc(t.old || 'nobody')} → ${esc(t.candidate)} (${esc(t.reason)}), started ${ago(t.started_at_ms)}${t.deadline_ms ? `, must serve within ${countdown(t.deadline_ms)}` : ''}</p>` : '<p class="muted" id="transition">No transition in flight.</p>'}
    <p>${cost ? `PRIMARY pool ${esc(pool(cost.instance_type, cost.availability_zone))}: spot ${esc(cost.spot_price || '—')} $/h, on-demand ${esc(cost.on_demand_price || '—')} $/h, savings ${cost.savings_percent != null ? cost.savings_percent.toFixed(1) + ' %' : '—'}` : ''}</p>
    <div class="actions admin-actions">
      <label>Promote <select id="promote-target">${replicas.map((r) => `<option>${esc(r.instance_id)}</option>`).join('')}</select></label>
      <button id="do-promote" ${dis} ${replicas.length ? '' : 'disabled'}>Promote</button>
      <label>Switch to <select id="switch-pool">${g.config.pools.map((p, k) => `<option value="${k}">${esc(pool(p.instance_type, p.availability_zone))}</option>`).join('')}</select></label>
      <button id="do-switch" ${dis}>Switch</button>
      <button id="do-replica" ${dis}>Manual replica ${g.config.manual_replica ? 'off' : 'on'}</button>
      <button id="do-pause" ${dis}>${g.config.paused ? 'Resume' : 'Pause'}</button>
    </div>
    ${volumes ? `<p id="volumes">Data volumes ${volumes.volumes.map((v) => `${esc(v.device)}=${esc(v.volume_id)}`).join(', ')} in ${esc(volumes.availability_zone || 'an unknown zone')}; ${volumes.rpo_s != null ? `RPO ${volumes.rpo_s} s (a replacement in another zone restores the snapshot of ${ago(Math.min(...volumes.volumes.map((v) => v.last_snapshot_at_ms || 0)))}; one every ${volumes.snapshot_interval_s} s)` : 'no snapshot yet: the PRIMARY stays in the volumes\' zone'}${(volumes.fast_restore || []).length ? `; fast snapshot restore: ${volumes.fast_restore.map((f) => `${esc(f.device)} ${esc(f.snapshot_id)} ${esc(f.state)} in ${esc(f.availability_zone)}`).join(', ')}` : ''}</p>` : ''}
    <h2>Members</h2>
    <table id="members"><thead><tr><th>instance</th><th>role</th><th>pool</th><th>agent</th><th>last heartbeat</th><th>EC2</th></tr></thead><tbody>
    ${m.map((i) => { const a = ix.agentOf.get(i.instance_id); return `<tr data-instance="${esc(i.instance_id)}"><td>${esc(i.instance_id)}</td><td class="role-${esc(i.role)}">${esc(i.role)}</td><td>${esc(pool(i.instance_type, i.availability_zone))}</td><td>${agentCell(a)}</td><td>${a ? ago(a.last_heartbeat_ms) : '—'}</td><td>${esc(i.ec2_state || '—')}</td></tr>`; }).join('')}
    </tbody></table>
    <h2>Prices of the candidate pools</h2>
    <div id="chart"></div>
    <h2>Failovers and switches</h2>
    <table id="failovers"><thead><tr><th>when</th><th>kind</th><th>why</th><th>from</th><th>to</th><th>took</th><th>switch downtime</th></tr></thead><tbody>
    ${failovers.map((a) => { const p = a.post_state || {}; const secs = (ms) => (ms != null ? (ms / 1000).toFixed(2) + ' s' : '—'); return `<tr><td>${new Date(a.at_ms).toLocaleString()}</td><td>${p.emergency ? '<span class="bad">emergency</span>' : 'planned'}</td><td>${esc(p.reason || a.actor)}</td><td>${esc((a.pre_state && a.pre_state.primary) || '—')}</td><td>${esc(p.primary)}</td><td>${secs(p.duration_ms)}</td><td>${secs(p.switch_downtime_ms)}</td></tr>`; }).join('') || '<tr><td colspan="7" class="muted">none</td></tr>'}
    </tbody></table>
    <table id="switches"><thead><tr><th>switch</th><th>started</th><th>to pool</th><th>state</th><th>from → to</th><th>downtime</th></tr></thead><tbody>
    ${switches.slice(0, 20).map((s) => `<tr><td>${s.id}</td><td>${new Date(s.started_at_ms).toLocaleString()}</td><td>${esc(pool(s.target_pool.instance_type, s.target_pool.availability_zone))}</td><td>${esc(s.state)}${s.failure ? ': ' + esc(s.failure) : ''}</td><td>${esc(s.from_instance || '—')} → ${esc(s.to_instance || '—')}</td><td>${s.downtime_ms != null ? (s.downtime_ms / 1000).toFixed(2) + ' s' : '—'}</td></tr>`).join('') || '<tr><td colspan="6" class="muted">none</td></tr>'}
    </tbody></table>
    <h2>Decisions</h2>
    <table id="decisions"><thead><tr><th>when</th><th>mode</th><th>model</th><th>action</th><th>target</th><th>outcome</th><th>reason</th></tr></thead><tbody>
    ${decisions.slice(0, 50).map((d) => `<tr><td>${new Date(d.at_ms).toLocaleString()}</td><td>${esc(d.mode)}</td><td>${esc(d.model)}</td><td>${esc(d.action)}</td><td>${d.target_pool ? esc(pool(d.target_pool.instance_type, d.target_pool.availability_zone)) : ''}</td><td>${esc(d.outcome)}</td><td>${esc(d.reason)}</td></tr>`).join('') || '<tr><td colspan="7" class="muted">none</td></tr>'}
    </tbody></table>`;
  chart(prices);
  const act = async (what, method, path, body, confirmText) => {
    if (confirmText && !confirm(confirmText)) return;
    try {
      const r = await api(method, path, body);
      toast(`${what}: done${r && r.phase ? ' (' + r.phase + ')' : ''}`);
    } catch (e) { toast(`${what} refused: ${e.message}`, true); }
    scheduleRefresh();
  };
  const gp = `/v1/groups/${encodeURIComponent(name)}`;
  $('#do-promote').onclick = () => act('promote', 'POST', `${gp}/promote`,
    { instance_id: $('#promote-target').value, expected_epoch: g.epoch, request_id: rid('promote') },
    `Promote ${$('#promote-target').value} in ${name}? The PRIMARY is demoted first.`);
  $('#do-switch').onclick = () => {
    const p = g.config.pools[Number($('#switch-pool').value)];
    act('switch', 'POST', `${gp}/switch`, { pool: p, request_id: rid('switch') },
      `Switch ${name} to ${pool(p.instance_type, p.availability_zone)}? A new instance is launched, then the PRIMARY moves.`);
  };
  const put = (what, change) => act(what, 'PUT', gp,
    { config: Object.assign({}, g.config, change), version: g.version, request_id: rid(what) });
  $('#do-replica').onclick = () => put('manual replica', { manual_replica: !g.config.manual_replica });
  $('#do-pause').onclick = () => put(g.config.paused ? 'resume' : 'pause', { paused: !g.config.paused });
}

// The price chart: per pool a line, filled points for observed hours and
// hollow points for interpolated ones (each its own legend entry).
const COLORS = ['#1d4ed8', '#b45309', '#15803d', '#7c3aed', '#be123c', '#0e7490', '#4d7c0f', '#9d174d'];
function chart(prices) {
  const el = $('#chart');
  if (!el) return;
  if (!prices || !prices.pools.length || !window.uPlot) { el.textContent = 'No prices yet.'; return; }
  const hours = [...new Set(prices.pools.flatMap((p) => p.points.map((x) => Date.parse(x.hour) / 1000)))].sort((a, b) => a - b);
  const at = new Map(hours.map((h, k) => [h, k]));
  const data = [hours];
  const series = [{}];
  let observed = 0, interpolated = 0;
  prices.pools.forEach((p, k) => {
    const color = COLORS[k % COLORS.length];
    const line = new Array(hours.length).fill(null);
    const obs = new Array(hours.length).fill(null);
    const itp = new Array(hours.length).fill(null);
    for (const x of p.points) {
      const j = at.get(Date.parse(x.hour) / 1000);
      const v = Number(x.price);
      line[j] = v;
      if (x.interpolated) { itp[j] = v; interpolated++; } else { obs[j] = v; observed++; }
    }
    const label = pool(p.instance_type, p.availability_zone);
    data.push(line, obs, itp);
    series.push(
      { label, stroke: color, width: 1.5, spanGaps: true, points: { show: false } },
      { label: `${label} observed`, stroke: color, fill: color, paths: () => null, points: { show: true, size: 6, fill: color, stroke: color } },
      { label: `${label} interpolated`, stroke: color, fill: '#ffffff', dash: [4, 4], paths: () => null, points: { show: true, size: 7, width: 1.5, fill: '#ffffff', stroke: color } },
    );
  });
  el.innerHTML = '';
  el.dataset.observed = String(observed);
  el.dataset.interpolated = String(interpolated);
  const width = Math.max(320, el.clientWidth - 20);
  new uPlot({
    width, height: 300, series,
    axes: [{}, { label: '$ / hour', size: 80, values: (u, v) => v.map((x) => x.toFixed(4)) }],
    legend: { live: false },
  }, data, el);
}

async function renderZombies(view) {
  const rows = S.instances.filter((i) => i.role === 'zombie' || i.role === 'failed')
    .sort((a, b) => a.updated_at_ms - b.updated_at_ms);
  const dis = admin() ? '' : 'disabled title="viewer token: read only"';
  view.innerHTML = `
    <h1>Zombie and failed instances</h1>
    <p class="muted">A ZOMBIE is an old PRIMARY or REPLICA that serves nothing and still costs money; a FAILED instance never became a REPLICA. Cleanup terminates them after their group's retention; here you can do it now.</p>
    <div class="actions"><button id="select-all" ${dis}>Select all</button>
    <button id="terminate" class="danger" ${dis}>Terminate selected</button></div>
    <table id="zombies"><thead><tr><th></th><th>instance</th><th>group</th><th>role</th><th>in role for</th><th>pool</th><th>EC2</th></tr></thead><tbody>
    ${rows.map((i) => `<tr data-instance="${esc(i.instance_id)}"><td><input type="checkbox" value="${esc(i.instance_id)}" ${dis}></td><td>${esc(i.instance_id)}</td><td>${esc(i.group)}</td><td class="role-${esc(i.role)}">${esc(i.role)}</td><td>${dur(Date.now() - i.updated_at_ms)}</td><td>${esc(pool(i.instance_type, i.availability_zone))}</td><td>${esc(i.ec2_state || '—')}</td></tr>`).join('') || '<tr><td colspan="7" class="muted">none</td></tr>'}
    </tbody></table><pre id="terminate-result"></pre>`;
  $('#select-all').onclick = () => { for (const c of document.querySelectorAll('#zombies input')) c.checked = true; };
  $('#terminate').onclick = async () => {
    const ids = [...document.querySelectorAll('#zombies input:checked')].map((c) => c.value);
    if (!ids.length) { toast('Select instances first.', true); return; }
    if (!confirm(`Terminate ${ids.length} instance(s) in EC2? This cannot be undone.\n${ids.join('\n')}`)) return;
    try {
      const r = await api('POST', '/v1/instances/terminate', { instance_ids: ids, request_id: rid('terminate') });
      const lines = r.instances.map((x) => `${x.instance_id}: ${x.action}${x.reason ? ' (' + x.reason + ')' : ''}`);
      $('#terminate-result').textContent = lines.join('\n');
      toast(`Terminate: ${r.instances.filter((x) => x.action === 'terminate').length} queued`);
    } catch (e) { toast(`Terminate refused: ${e.message}`, true); }
    scheduleRefresh();
  };
}

function renderEvents(view) {
  view.innerHTML = `<h1>Recent events</h1><p class="muted">Since this page opened; <code>spotctl audit</code> has the whole log.</p>
    <table id="events"><thead><tr><th>#</th><th>when</th><th>who</th><th>what</th><th>entity</th></tr></thead><tbody>
    ${S.events.map((e) => `<tr><td>${esc(e.id)}</td><td>${e.at_ms ? new Date(e.at_ms).toLocaleTimeString() : ''}</td><td>${esc(e.actor)}</td><td>${esc(e.action)}</td><td>${esc(e.entity)}</td></tr>`).join('')}
    </tbody></table>`;
}

// ---- boot ---------------------------------------------------------------

(async () => {
  try { await start(await api('GET', '/ui/session')); } catch (_) { showLogin(); }
})();
