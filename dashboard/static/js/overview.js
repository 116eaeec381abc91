// Overview: device counts by presence, architecture and label; every job
// with its state and counts; what failed recently.

import { $, h, badge, table, timeEl, clock, deviceLink, jobLink, denied, DENIED } from './dom.js';
import { rolloutMark } from './model.js';

export class OverviewView {
  constructor(fleet) {
    this.fleet = fleet;
    this.drawn = '';
  }

  render(now) {
    const f = this.fleet;
    // Redraw only when something it shows changed (or once per tick, for
    // the relative times).
    const key = [f.v.devices, f.v.membership, f.v.jobs, f.v.summary, f.v.feed, f.v.access, Math.floor(now / 10000)].join('/');
    if (key === this.drawn) return;
    this.drawn = key;

    const c = f.counts();
    $('count-total').textContent = c.total;
    $('count-online').textContent = c.online;
    $('count-offline').textContent = c.offline;
    $('count-unknown').textContent = c.unknown;
    const jobs = f.jobBriefs();
    $('count-jobs').textContent = jobs.length;

    const src = $('overview-source');
    src.dataset.source = c.source;
    src.replaceChildren(...(c.source === 'summary'
      ? ['Device counts from the planner\u2019s fleet summary, updated ', timeEl(c.updatedAt, now), '.']
      : [f.deniedKind('summary') ? `The planner\u2019s fleet summary is ${DENIED}` : 'No fleet summary from the planner yet',
        `: counted in this browser from ${f.devices.size} devices\u2019 topics.`]));

    $('by-arch').replaceChildren(countTable('architecture', c.by_arch, c.total));
    const labels = Object.keys(c.by_label).sort();
    $('by-label').replaceChildren(labels.length === 0
      ? h('p', { class: 'muted' }, 'No labels.')
      : table(['label', 'value', 'devices'], labels.flatMap((k) => labelRows(k, c.by_label[k]))));

    $('overview-jobs').replaceChildren(jobs.length === 0
      ? (f.deniedKind('jobstatus') && !f.summary ? denied('jobstatus', `Job status is ${DENIED}.`)
        : h('p', { class: 'muted' }, 'No jobs. Submit one with tether job run FILE.'))
      : table(['job', 'type', 'version', 'state', 'running', 'pending', 'complete', 'failed', 'placed / desired'],
        jobs.map((j) => {
          const k = j.counts || {};
          return h('tr', { 'data-testid': 'overview-job', dataset: { job: j.job, state: j.state } },
            h('td', null, jobLink(j.job), rolloutMarker(j)), h('td', null, j.type || ''), h('td', { class: 'num' }, j.version || '—'),
            h('td', null, badge(j.state)), h('td', { class: 'num' }, k.running | 0), h('td', { class: 'num' }, k.pending | 0),
            h('td', { class: 'num' }, k.complete | 0), h('td', { class: 'num' }, k.failed | 0),
            h('td', { class: 'num' }, `${k.placed | 0} / ${k.desired | 0}`));
        })));

    const fails = f.failures(20);
    $('overview-failures').replaceChildren(fails.length === 0
      ? h('p', { class: 'muted' }, 'Nothing failed recently.')
      : h('ul', { class: 'failures' }, fails.map((x) => h('li', { 'data-testid': 'failure', dataset: { kind: x.kind } },
        badge(x.type), ' ',
        x.time && x.kind === 'event' ? h('span', { class: 'muted' }, clock(x.time), ' ') : null,
        x.device ? deviceLink(x.device) : null, x.device && x.job ? ' · ' : '', x.job ? jobLink(x.job) : null,
        x.task ? ' · ' + x.task : '', x.message ? h('span', { class: 'msg' }, ' — ' + x.message) : null))));
  }
}

/** rolloutMarker flags a job whose rollout is running, paused (for promotion) or failed. */
function rolloutMarker(j) {
  const s = rolloutMark(j);
  if (!s) return null;
  return [' ', h('span', { class: 'badge small r-' + s, 'data-testid': 'overview-rollout', dataset: { state: s },
    title: `rollout of version ${j.rollout.version | 0}: ${j.rollout.description || s}` }, 'rollout ' + s)];
}

function sortedEntries(m) {
  return Object.entries(m || {}).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
}

// A label can have a value per device (a serial number): show the most
// common values only.
const LABEL_VALUES_SHOWN = 8;

function labelRows(k, m) {
  const all = sortedEntries(m);
  const rows = all.slice(0, LABEL_VALUES_SHOWN).map(([v, n], i) =>
    h('tr', null, h('td', null, i === 0 ? k : ''), h('td', null, v), h('td', { class: 'num' }, n)));
  if (all.length > LABEL_VALUES_SHOWN) {
    const rest = all.slice(LABEL_VALUES_SHOWN).reduce((s, [, n]) => s + n, 0);
    rows.push(h('tr', { class: 'muted' }, h('td'), h('td', null, `${all.length - LABEL_VALUES_SHOWN} more values`), h('td', { class: 'num' }, rest)));
  }
  return rows;
}

function countTable(what, m, total) {
  const rows = sortedEntries(m);
  if (rows.length === 0) return h('p', { class: 'muted' }, 'No facts yet.');
  return table([what, 'devices', ''], rows.map(([k, n]) => {
    const bar = h('span', { class: 'bar' });
    bar.style.width = (total ? Math.max(2, Math.round((100 * n) / total)) : 0) + '%';
    return h('tr', null, h('td', null, k || '(unknown)'), h('td', { class: 'num' }, n), h('td', { class: 'bar-cell' }, bar));
  }));
}
