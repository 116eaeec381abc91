// Jobs: every job status the planner publishes, with its groups (and why
// instances could not be placed), the rollout of its version, its
// allocations with their health, the validation errors of a rejected
// submission, and the versions the planner keeps (the job history).

import { $, h, badge, table, timeEl, deviceLink, plural, denied, DENIED } from './dom.js';
import { allocsNotShown, rolloutParts, rolloutText } from './model.js';

/** ALLOCS_SHOWN caps the allocations drawn per job (a system job has one per device). */
const ALLOCS_SHOWN = 100;

export class JobsView {
  constructor(fleet, schedule) {
    this.fleet = fleet;
    this.list = $('job-list');
    this.search = $('job-search');
    this.drawn = '';
    this.focus = '';
    this.search.addEventListener('input', schedule);
  }

  /** select highlights one job and scrolls to it. */
  select(id) {
    this.focus = id;
    this.drawn = '';
    this.scrollPending = !!id;
  }

  render(now) {
    const f = this.fleet;
    const q = this.search.value.trim().toLowerCase();
    const key = [f.v.jobs, f.v.access, q, this.focus, Math.floor(now / 10000)].join('/');
    if (key === this.drawn) return;
    this.drawn = key;
    const all = [...f.jobs.values()].sort((a, b) => (a.job < b.job ? -1 : a.job > b.job ? 1 : 0));
    const jobs = q ? all.filter((j) => j.job.toLowerCase().includes(q)) : all;
    $('job-shown').textContent = jobs.length === all.length ? plural(all.length, 'job') : `${jobs.length} of ${plural(all.length, 'job')}`;
    if (all.length === 0) {
      this.list.replaceChildren(f.deniedKind('jobstatus') ? denied('jobstatus', `Job status is ${DENIED}.`)
        : h('p', { class: 'muted' }, 'No job status published yet. Submit a job with tether job run FILE.'));
      return;
    }
    const history = (j) => f.history.get(j.job) || (f.deniedKind('history') ? 'denied' : null);
    this.list.replaceChildren(...jobs.map((j) => jobCard(j, history(j), j.job === this.focus, now)));
    if (this.scrollPending) {
      this.scrollPending = false;
      const el = this.list.querySelector('.job-card.focus');
      if (el) el.scrollIntoView({ block: 'start' });
    }
  }
}

/** jobCard draws a protocol.JobStatus; hist is its protocol.JobHistory, null, or "denied". */
function jobCard(j, hist, focus, now) {
  const c = j.counts || {};
  const groups = j.groups || [];
  const allocs = j.allocations || [];
  const errors = j.errors || [];
  const more = allocsNotShown(j, ALLOCS_SHOWN);
  return h('article', { class: 'panel job-card' + (focus ? ' focus' : ''), 'data-testid': 'job-card', dataset: { job: j.job, state: j.state, rollout: j.rollout?.state || '' } },
    h('div', { class: 'job-head' },
      h('h3', null, j.job), badge(j.state, 'job-state'),
      h('span', { class: 'muted' }, [j.type, j.version ? 'version ' + j.version : 'no accepted version'].filter(Boolean).join(' · ')),
      h('span', { class: 'muted right' }, 'updated ', timeEl(j.updated_at, now))),
    h('p', { class: 'counts', 'data-testid': 'job-counts' },
      count('desired', c.desired), count('placed', c.placed), count('running', c.running, 'running'),
      count('pending', c.pending, 'pending'), count('complete', c.complete, 'complete'), count('failed', c.failed, 'failed')),
    errors.length === 0 ? null : h('div', { class: 'errors', 'data-testid': 'job-errors' },
      h('p', null, j.version
        ? `The last submission was rejected; version ${j.version} stays in force.`
        : 'The submission was rejected:',
      j.submission ? h('span', { class: 'muted mono' }, ' (' + j.submission.slice(0, 12) + ')') : null),
      h('ul', null, errors.map((e) => h('li', { 'data-testid': 'job-error' }, e.path ? h('code', null, e.path) : null, e.path ? ': ' : '', e.message)))),
    j.rollout ? rolloutSection(j.job, j.rollout, now) : null,
    groups.length === 0 ? null : table(['group', 'placed / desired', 'unplaced'], groups.map((g) =>
      h('tr', { 'data-testid': 'job-group', dataset: { group: g.name } },
        h('td', null, g.name), h('td', { class: 'num' }, `${g.placed | 0} / ${g.desired | 0}`),
        h('td', { class: g.unplaced ? 'warn' : 'muted' }, g.unplaced || '—'))), { class: 'groups' }),
    allocs.length === 0 ? h('p', { class: 'muted' }, j.state === 'stopped' ? 'Stopped: no allocations.' : 'No allocations.') :
      table(['allocation', 'group', 'device', 'version', 'state', 'health', 'message'], allocs.slice(0, ALLOCS_SHOWN).map((a) =>
        h('tr', { 'data-testid': 'job-alloc', dataset: { alloc: a.id, device: a.device, state: a.state, health: a.health || '' } },
          h('td', { class: 'mono' }, a.id), h('td', null, a.group), h('td', null, deviceLink(a.device)),
          h('td', { class: 'num' }, a.version || ''), h('td', null, badge(a.state)),
          h('td', { 'data-testid': 'alloc-health' }, a.health ? badge(a.health) : h('span', { class: 'muted', title: 'not judged (yet)' }, '—')),
          h('td', { class: 'msg' }, a.message || ''))),
      { class: 'allocs' }),
    more > 0 ? h('p', { class: 'muted', 'data-testid': 'job-allocs-more' }, `…and ${more} more allocations.`) : null,
    hist === 'denied' ? denied('history', `The version history is ${DENIED}.`) : hist ? historySection(hist, j.version, now) : null,
  );
}

/**
 * historySection lists the versions of a job the planner keeps
 * (protocol.JobHistory), newest first, folded away: when each was
 * submitted, whether it became stable, and how its rollout ended.
 */
function historySection(hist, current, now) {
  const versions = [...(hist.versions || [])].sort((a, b) => (b.version | 0) - (a.version | 0));
  if (versions.length === 0) return null;
  return h('details', { class: 'history', 'data-testid': 'job-history' },
    h('summary', null, `Versions (${versions.length})`),
    table(['version', 'submitted', 'stable', 'rollout', 'digest'], versions.map((v) =>
      h('tr', { 'data-testid': 'job-version', dataset: { version: v.version | 0, stable: v.stable ? 'true' : 'false' } },
        h('td', { class: 'num' }, v.version | 0, (v.version | 0) === (current | 0) ? h('span', { class: 'muted' }, ' (current)') : null),
        h('td', null, timeEl(v.submitted_at, now)),
        h('td', null, v.stable ? 'stable' : h('span', { class: 'muted' }, '—')),
        h('td', null, v.rollout ? h('span', { class: 'badge small r-' + (v.rollout.state || 'none') }, v.rollout.state || '—') : h('span', { class: 'muted' }, '—')),
        h('td', { class: 'mono muted' }, (v.digest || '').slice(0, 12))))));
}

function count(label, n, cls) {
  return h('span', { class: 'count' + (cls && n ? ' s-' + cls : '') }, h('strong', null, n | 0), ' ' + label);
}

/** Rollout states in words, for the badge's tooltip. */
const ROLLOUT_STATES = {
  running: 'updating allocations',
  paused: 'canaries updated: waiting for promotion',
  successful: 'every allocation updated and healthy',
  failed: 'halted: nothing more is updated',
};

/**
 * rolloutSection draws a protocol.Rollout: its state, why, the version it
 * reverted to, how to promote a paused one, and per group a progress bar
 * whose parts are also written out as numbers (colour is never the only
 * sign: the unhealthy and offline parts are hatched, and every part is
 * counted in the table).
 */
function rolloutSection(job, r, now) {
  const groups = r.groups || [];
  const reverted = r.reverted_to | 0;
  return h('section', { class: 'rollout', 'data-testid': 'job-rollout', 'aria-label': `Rollout of version ${r.version | 0}`,
    dataset: { state: r.state || '', version: r.version | 0, revertedTo: reverted || '' } },
  h('div', { class: 'rollout-head' },
    h('h4', null, `Rollout of version ${r.version | 0}`),
    h('span', { class: 'badge r-' + (r.state || 'none'), 'data-testid': 'rollout-state', dataset: { state: r.state || '' }, title: ROLLOUT_STATES[r.state] || '' },
      r.state || '—'),
    h('span', { class: 'muted' }, 'started ', timeEl(r.started_at, now),
      r.progress_at && r.progress_at !== r.started_at ? [' · last healthy ', timeEl(r.progress_at, now)] : null)),
  r.description ? h('p', { class: 'rollout-desc', 'data-testid': 'rollout-description' }, r.description) : null,
  reverted ? h('p', { class: 'rollout-note bad', 'data-testid': 'rollout-reverted', dataset: { version: reverted } },
    `Reverted to version ${reverted}: the planner republished that version's document, rolled out without canaries.`) : null,
  r.state === 'paused' ? h('p', { class: 'rollout-note paused', 'data-testid': 'rollout-promote' },
    'Paused for promotion. Once the canaries are healthy, let the rest follow with ',
    h('code', null, `tether job promote ${job}`), '.') : null,
  groups.length === 0 ? null : table(['group', 'progress', 'healthy', 'updated', 'total', 'unhealthy', 'pending (offline)', 'canaries'],
    groups.map((g) => rolloutRow(g)), { class: 'rollout-groups' }),
  groups.length === 0 ? null : legend());
}

function rolloutRow(g) {
  const p = rolloutParts(g);
  const text = rolloutText(g);
  const bar = h('div', { class: 'progress', role: 'progressbar', 'data-testid': 'rollout-bar', 'aria-label': `Group ${g.name}`,
    'aria-valuemin': 0, 'aria-valuemax': p.total, 'aria-valuenow': p.healthy, 'aria-valuetext': text, title: text },
  ['healthy', 'updating', 'unhealthy', 'pendingOffline'].map((k) => {
    if (!p[k] || !p.total) return null;
    const seg = h('span', { class: 'seg seg-' + k });
    seg.style.width = (100 * p[k] / p.total) + '%';
    return seg;
  }));
  const canaries = g.canaries | 0;
  return h('tr', { 'data-testid': 'rollout-group', dataset: {
    group: g.name, total: p.total, updated: g.updated | 0, healthy: p.healthy, unhealthy: p.unhealthy,
    pendingOffline: p.pendingOffline, canaries, promoted: g.promoted ? 'true' : 'false' } },
  h('td', null, g.name), h('td', { class: 'progress-cell' }, bar),
  h('td', { class: 'num', 'data-testid': 'rollout-healthy' }, p.healthy),
  h('td', { class: 'num', 'data-testid': 'rollout-updated' }, g.updated | 0),
  h('td', { class: 'num', 'data-testid': 'rollout-total' }, p.total),
  h('td', { class: 'num' + (p.unhealthy ? ' err' : ''), 'data-testid': 'rollout-unhealthy' }, p.unhealthy),
  h('td', { class: 'num' + (p.pendingOffline ? ' warn' : ''), 'data-testid': 'rollout-pending-offline' }, p.pendingOffline),
  h('td', { 'data-testid': 'rollout-canaries' }, canaries === 0 ? h('span', { class: 'muted' }, '—')
    : [String(canaries), ' · ', g.promoted ? 'promoted' : h('strong', null, 'not promoted')]));
}

function legend() {
  const item = (k, label) => h('li', null, h('span', { class: 'swatch seg-' + k, 'aria-hidden': 'true' }), label);
  return h('ul', { class: 'legend', 'aria-hidden': 'true' },
    item('healthy', 'healthy'), item('updating', 'updated, health not decided'), item('unhealthy', 'unhealthy'),
    item('pendingOffline', 'pending (offline)'), item('waiting', 'not updated yet'));
}
