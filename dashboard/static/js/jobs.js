// Jobs: every job status the planner publishes, with its groups (and why
// instances could not be placed), its allocations, and the validation errors
// of a rejected submission.

import { $, h, badge, table, timeEl, deviceLink, plural } from './dom.js';

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
    const key = [f.v.jobs, q, this.focus, Math.floor(now / 10000)].join('/');
    if (key === this.drawn) return;
    this.drawn = key;
    const all = [...f.jobs.values()].sort((a, b) => (a.job < b.job ? -1 : a.job > b.job ? 1 : 0));
    const jobs = q ? all.filter((j) => j.job.toLowerCase().includes(q)) : all;
    $('job-shown').textContent = jobs.length === all.length ? plural(all.length, 'job') : `${jobs.length} of ${plural(all.length, 'job')}`;
    if (all.length === 0) {
      this.list.replaceChildren(h('p', { class: 'muted' }, 'No job status published yet. Submit a job with tether job run FILE.'));
      return;
    }
    this.list.replaceChildren(...jobs.map((j) => jobCard(j, j.job === this.focus, now)));
    if (this.scrollPending) {
      this.scrollPending = false;
      const el = this.list.querySelector('.job-card.focus');
      if (el) el.scrollIntoView({ block: 'start' });
    }
  }
}

function jobCard(j, focus, now) {
  const c = j.counts || {};
  const groups = j.groups || [];
  const allocs = j.allocations || [];
  const errors = j.errors || [];
  return h('article', { class: 'panel job-card' + (focus ? ' focus' : ''), 'data-testid': 'job-card', dataset: { job: j.job, state: j.state } },
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
    groups.length === 0 ? null : table(['group', 'placed / desired', 'unplaced'], groups.map((g) =>
      h('tr', { 'data-testid': 'job-group', dataset: { group: g.name } },
        h('td', null, g.name), h('td', { class: 'num' }, `${g.placed | 0} / ${g.desired | 0}`),
        h('td', { class: g.unplaced ? 'warn' : 'muted' }, g.unplaced || '—'))), { class: 'groups' }),
    allocs.length === 0 ? h('p', { class: 'muted' }, j.state === 'stopped' ? 'Stopped: no allocations.' : 'No allocations.') :
      table(['allocation', 'group', 'device', 'version', 'state', 'message'], allocs.slice(0, ALLOCS_SHOWN).map((a) =>
        h('tr', { 'data-testid': 'job-alloc', dataset: { alloc: a.id, device: a.device, state: a.state } },
          h('td', { class: 'mono' }, a.id), h('td', null, a.group), h('td', null, deviceLink(a.device)),
          h('td', { class: 'num' }, a.version || ''), h('td', null, badge(a.state)), h('td', { class: 'msg' }, a.message || ''))),
      { class: 'allocs' }),
    allocs.length > ALLOCS_SHOWN ? h('p', { class: 'muted' }, `…and ${allocs.length - ALLOCS_SHOWN} more allocations.`) : null,
  );
}

function count(label, n, cls) {
  return h('span', { class: 'count' + (cls && n ? ' s-' + cls : '') }, h('strong', null, n | 0), ' ' + label);
}
