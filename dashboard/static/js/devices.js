// Devices: a searchable list that stays responsive at 10,000 devices (only
// the rows in view exist in the DOM, and they are reused while scrolling),
// and the details of the selected device.

import { $, h, badge, timeEl, clock, mb, jobLink, plural, denied, DENIED } from './dom.js';
import { filterDevices, statusOf, labelPairs, allocSummary, schedulingOf } from './model.js';

/** ROW_H is the height of one row in px; style.css uses the same. */
const ROW_H = 36;
/** OVERSCAN rows are drawn above and below the visible ones. */
const OVERSCAN = 6;
/** RESORT_MS throttles sorting and filtering while messages stream in. */
const RESORT_MS = 250;

export class DevicesView {
  /**
   * @param {import('./model.js').Fleet} fleet
   * @param {(id: string) => void} onSelect called when the selection changes, with "" for none
   * @param {() => void} schedule asks for a frame
   */
  constructor(fleet, onSelect, schedule) {
    this.fleet = fleet;
    this.onSelect = onSelect;
    this.schedule = schedule;
    this.list = $('device-list');
    this.spacer = this.list.querySelector('.vspacer');
    this.search = $('device-search');
    this.statusSel = $('device-status-filter');
    this.labelSel = $('device-label-filter');
    this.detail = $('device-detail');
    this.selected = '';

    this.ids = []; // every device id, sorted
    this.sortedAt = -1; // membership version of ids
    this.shown = []; // ids that pass the filter
    this.shownKey = ''; // filter and data the shown list was computed for
    this.lastSort = 0;
    this.rows = []; // reusable row elements
    this.labelsKey = '';
    this.detailKey = '';

    const refilter = () => {
      this.shownKey = '';
      this.list.scrollTop = 0;
      schedule();
    };
    this.search.addEventListener('input', refilter);
    this.statusSel.addEventListener('change', refilter);
    this.labelSel.addEventListener('change', refilter);
    this.list.addEventListener('scroll', schedule, { passive: true });
    window.addEventListener('resize', schedule);
  }

  /** select shows a device's details ("" hides them). */
  select(id) {
    if (id === this.selected) return;
    this.selected = id;
    this.detailKey = '';
    for (const r of this.rows) r.key = ''; // redraw the selection mark
    this.onSelect(id);
  }

  render(now) {
    const f = this.fleet;
    const busy = now - this.lastSort < RESORT_MS;
    if (f.v.membership !== this.sortedAt && (!busy || this.ids.length === 0)) {
      this.ids = [...f.devices.keys()].sort();
      this.sortedAt = f.v.membership;
      this.lastSort = now;
      this.shownKey = '';
    } else if (f.v.membership !== this.sortedAt) {
      this.schedule(); // catch up once the throttle allows
    }

    const filter = { text: this.search.value, status: this.statusSel.value, label: this.labelSel.value };
    const filterKey = JSON.stringify(filter);
    // What a filter looks at changes with messages; refilter for that at
    // most every RESORT_MS (a new filter applies at once).
    const dataKey = filter.text || filter.status || filter.label ? f.v.devices : 0;
    const key = filterKey + '|' + this.sortedAt + '|' + dataKey;
    if (key !== this.shownKey) {
      if (this.shownKey.startsWith(filterKey + '|') && busy) {
        this.schedule();
      } else {
        this.shown = filterDevices(f, this.ids, filter);
        this.shownKey = key;
        this.lastSort = now;
      }
    }

    // Both numbers are of the list as drawn (sorted at most every
    // RESORT_MS), so they agree with the rows; the tab counts live.
    const shownEl = $('device-shown');
    const total = this.ids.length;
    shownEl.dataset.shown = this.shown.length;
    shownEl.dataset.total = total;
    shownEl.textContent = this.shown.length === total
      ? plural(total, 'device')
      : `${this.shown.length} of ${plural(total, 'device')}`;

    this.#rows();
    this.#labels(now);
    this.#detail(now);
  }

  // #rows draws the rows in view, reusing elements.
  #rows() {
    const n = this.shown.length;
    this.spacer.style.height = n * ROW_H + 'px';
    const top = this.list.scrollTop;
    const height = this.list.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const last = Math.min(n, Math.ceil((top + height) / ROW_H) + OVERSCAN);
    let used = 0;
    for (let i = first; i < last; i++, used++) {
      const row = this.rows[used] || this.#newRow();
      const d = this.fleet.devices.get(this.shown[i]);
      if (!d) {
        row.el.hidden = true;
        continue;
      }
      const key = d.id + ':' + d.rev + ':' + (d.id === this.selected);
      if (row.key !== key) {
        fillRow(row, d, d.id === this.selected);
        row.key = key;
      }
      if (row.top !== i) {
        row.el.style.transform = `translateY(${i * ROW_H}px)`;
        row.top = i;
      }
      row.el.hidden = false;
    }
    for (let i = used; i < this.rows.length; i++) {
      const r = this.rows[i];
      if (!r.el.hidden) r.el.hidden = true;
    }
    if (n === 0 && !this.emptyEl) {
      this.emptyEl = h('p', { class: 'empty muted', 'data-testid': 'device-empty' });
      this.spacer.append(this.emptyEl);
    }
    if (this.emptyEl) {
      this.emptyEl.hidden = n !== 0;
      const f = this.fleet;
      this.emptyEl.textContent = f.devices.size !== 0 ? 'No device matches the filter.'
        : f.deniedKind('presence') ? `Device presence is ${DENIED}.` : 'No devices have reported yet.';
    }
  }

  #newRow() {
    const link = h('a', { class: 'vrow' });
    const el = h('div', { role: 'listitem', class: 'vitem', 'data-testid': 'device-row' }, link);
    const row = { el, link, key: '', top: -1 };
    this.spacer.append(el);
    this.rows.push(row);
    return row;
  }

  // #labels refreshes the label filter's choices, at most once a second.
  #labels(now) {
    const key = this.fleet.v.summary + '/' + this.fleet.v.devices;
    if (key === this.labelsKey) return;
    if (now - (this.labelsAt || 0) < 1000) {
      this.schedule();
      return;
    }
    this.labelsKey = key;
    this.labelsAt = now;
    const byLabel = this.fleet.counts().by_label;
    const pairs = [];
    for (const k of Object.keys(byLabel).sort()) {
      for (const v of Object.keys(byLabel[k]).sort()) pairs.push(k + '=' + v);
    }
    const cur = this.labelSel.value;
    if (cur && !pairs.includes(cur)) pairs.unshift(cur);
    const want = ['', ...pairs.slice(0, 500)].join('\n');
    if (want === this.labelOptions) return;
    this.labelOptions = want;
    this.labelSel.replaceChildren(h('option', { value: '' }, 'any'), ...pairs.slice(0, 500).map((p) => h('option', { value: p }, p)));
    this.labelSel.value = cur;
  }

  #detail(now) {
    const id = this.selected;
    const d = id ? this.fleet.devices.get(id) : null;
    const key = id + ':' + (d ? d.rev : 'none') + ':' + this.fleet.v.access + ':' + Math.floor(now / 10000);
    if (key === this.detailKey) return;
    this.detailKey = key;
    this.detail.hidden = !id;
    if (!id) {
      this.detail.replaceChildren();
      return;
    }
    this.detail.dataset.device = id;
    const refused = (kind) => this.fleet.deniedKind(kind, id);
    this.detail.replaceChildren(...(d ? deviceDetail(d, now, refused) : [
      h('h3', null, id), h('p', { class: 'muted' }, 'Nothing known about this device (yet).'),
    ]));
  }
}

function fillRow(row, d, selected) {
  const st = statusOf(d);
  const f = d.facts;
  row.el.dataset.device = d.id;
  row.el.dataset.status = st;
  row.link.href = '#devices/' + encodeURIComponent(d.id);
  row.link.classList.toggle('selected', selected);
  if (selected) row.link.setAttribute('aria-current', 'true');
  else row.link.removeAttribute('aria-current');
  const labels = labelPairs(d).join(' ');
  const err = d.reported?.error;
  const sched = schedulingOf(d);
  row.el.dataset.scheduling = sched;
  row.link.replaceChildren(
    h('span', { class: 'dot s-' + st, title: st }, h('span', { class: 'visually-hidden' }, st)),
    h('span', { class: 'cell-id' }, d.id, f?.hostname && f.hostname !== d.id ? h('span', { class: 'muted' }, ' ' + f.hostname) : null,
      sched === 'eligible' ? null : [' ', h('span', { class: 'badge small sc-' + sched }, sched)]),
    h('span', { class: 'cell' }, f ? `${f.arch || '?'} / ${f.os || '?'}` : h('span', { class: 'muted' }, 'no facts')),
    h('span', { class: 'cell muted', title: labels }, labels),
    h('span', { class: 'cell' + (err ? ' err' : '') }, err ? 'error' : allocSummary(d)),
    h('span', { class: 'cell num' }, d.reported ? 'gen ' + d.reported.observed_generation : ''),
  );
}

/**
 * deviceDetail draws what is known about one device. refused(kind) says
 * whether the broker refused the subscription that brings that kind of
 * message (a viewer token may not read desired state, for one).
 */
function deviceDetail(d, now, refused) {
  const st = statusOf(d);
  const p = d.presence;
  const f = d.facts;
  const r = d.reported;
  const out = [
    h('div', { class: 'detail-head' },
      h('h3', null, d.id), badge(st, 'device-detail-status'),
      h('a', { href: '#devices', class: 'close', 'aria-label': 'Close details' }, '×')),
    h('p', { 'data-testid': 'device-presence' },
      p ? [st, ' since ', timeEl(p.since, now), p.version ? h('span', { class: 'muted' }, ' · edged ' + p.version) : null]
        : refused('presence') ? denied('presence', `Presence is ${DENIED}.`) : h('span', { class: 'muted' }, 'No presence message yet.')),
    schedulingLine(d, refused),
  ];

  out.push(h('h4', null, 'Facts'));
  out.push(!f && refused('facts') ? denied('facts', `Facts are ${DENIED}.`) : f ? h('dl', { class: 'facts', 'data-testid': 'device-facts' },
    kv('hostname', f.hostname || '—'), kv('arch', f.arch), kv('os', [f.os, f.kernel].filter(Boolean).join(' ')),
    kv('cpu', `${f.cpu_cores || 0} cores · ${f.cpu_mhz || 0} MHz`), kv('memory', mb(f.memory_mb)),
    kv('drivers', (f.drivers || []).join(', ') || 'none'),
    kv('labels', labelPairs(d).length ? labelPairs(d).map((l) => h('span', { class: 'chip' }, l)) : '—'),
  ) : h('p', { class: 'muted' }, 'No facts yet.'));

  const obs = r ? r.observed_generation : null;
  const want = d.desired ? d.desired.generation : null;
  const noDesired = refused('desired');
  let sync = noDesired ? `desired state ${DENIED}` : 'waiting for the desired state';
  if (want != null && obs != null) sync = obs === want ? 'in sync' : obs < want ? `applying (behind by ${want - obs})` : 'ahead of desired';
  else if (want != null) sync = 'nothing reported yet';
  out.push(h('h4', null, 'Generation'));
  out.push(h('p', { 'data-testid': 'device-generation', dataset: { observed: obs ?? '', desired: want ?? '' } },
    `observed ${obs ?? '—'} · desired ${want ?? '—'} · `, h('strong', null, sync),
    r ? h('span', { class: 'muted' }, ' · reported ', timeEl(r.time, now)) : null));
  if (r?.error) out.push(h('p', { class: 'err', 'data-testid': 'device-error' }, r.error));
  if (!r && refused('reported')) out.push(denied('reported', `Reports are ${DENIED}.`));

  const allocs = r?.allocations || [];
  out.push(h('h4', null, `Allocations (${allocs.length})`));
  out.push(allocs.length === 0 ? h('p', { class: 'muted' }, 'None reported.') :
    h('ul', { class: 'allocs plain' }, allocs.map((a) => h('li', { 'data-testid': 'device-alloc', dataset: { alloc: a.id, state: a.state } },
      h('div', { class: 'alloc-head' }, badge(a.state), ' ', jobLink(a.job), a.job_version ? h('span', { class: 'muted' }, ' v' + a.job_version) : null,
        h('span', { class: 'muted' }, ' · ' + a.group)),
      h('div', { class: 'mono muted' }, a.id),
      h('ul', { class: 'tasks plain' }, (a.tasks || []).map((t) => h('li', null,
        h('strong', null, t.name), ' ', badge(t.state),
        t.restarts ? ` ${plural(t.restarts, 'restart')}` : '',
        t.exit_code != null ? ` · exit ${t.exit_code}` : '',
        t.message ? h('span', { class: 'muted' }, ' · ' + t.message) : null)))))));

  if (noDesired && !d.desired) {
    out.push(h('h4', null, 'Desired'));
    out.push(denied('desired', `The desired state is ${DENIED}: a viewer token reads status topics, not what the planner sends to devices.`));
  } else if (d.desired) {
    const reportedIds = new Set(allocs.map((a) => a.id));
    const desired = d.desired.allocations || [];
    out.push(h('h4', null, `Desired (${desired.length})`));
    out.push(desired.length === 0 ? h('p', { class: 'muted' }, 'Nothing should run here.') :
      h('ul', { class: 'plain', 'data-testid': 'device-desired' }, desired.map((a) => h('li', null,
        h('span', { class: 'mono' }, a.id), ' ', jobLink(a.job), ` v${a.job_version} · `,
        (a.tasks || []).map((t) => `${t.name} (${t.driver})`).join(', '),
        reportedIds.has(a.id) ? '' : h('span', { class: 'muted' }, ' · not reported yet')))));
  }

  out.push(h('h4', null, 'Last events'));
  out.push(d.events.length === 0 ? (refused('events') ? denied('events', `Events are ${DENIED}.`) : h('p', { class: 'muted' }, 'None since this page was opened.')) :
    h('ol', { class: 'feed compact' }, d.events.map((e) => eventItem(e, false))));
  return out;
}

/** SCHEDULING says what each scheduling state means for the planner. */
const SCHEDULING = {
  eligible: 'takes new allocations',
  ineligible: 'takes no new allocations; those it has stay',
  draining: 'takes no new allocations; those it has are moved to other devices',
};

function schedulingLine(d, refused) {
  const st = schedulingOf(d);
  if (!d.scheduling && refused('scheduling')) return denied('scheduling', `Scheduling is ${DENIED}.`);
  return h('p', { 'data-testid': 'device-scheduling', dataset: { scheduling: st } },
    'Scheduling: ', h('span', { class: 'badge sc-' + st }, st), h('span', { class: 'muted' }, ' · ' + SCHEDULING[st]));
}

function kv(k, v) {
  return [h('dt', null, k), h('dd', null, v)];
}

/** eventItem is one line of an event list, shared with the live feed. */
export function eventItem(e, withDevice) {
  const parts = [h('span', { class: 'when' }, clock(e.time)), badge(e.type)];
  if (withDevice) parts.push(h('a', { href: '#devices/' + encodeURIComponent(e.device), class: 'dev-link' }, e.device));
  if (e.job) parts.push(jobLink(e.job));
  if (e.task) parts.push(h('span', null, e.task));
  if (e.exit_code != null) parts.push(h('span', null, 'exit ' + e.exit_code));
  if (e.message) parts.push(h('span', { class: 'msg' }, e.message));
  return h('li', { 'data-testid': 'event-row', dataset: { type: e.type, device: e.device } }, parts);
}
