// The fleet as this browser knows it: folded from MQTT messages, with no DOM
// and no network, so that it can be tested in node as well.
//
// Every retained topic replaces one part of the state (an empty payload
// deletes it, as it deletes the retained message). Views do not watch the
// model: they compare the version counters below with the ones they drew.

const decoder = new TextDecoder();

/** Most events kept for the live feed (newest first). */
export const FEED_CAP = 500;
/** Most events kept per device. */
export const DEVICE_EVENTS_CAP = 20;

/** Event types that count as failures in the overview. */
export const FAILURE_EVENTS = new Set(['failed', 'driver_error', 'restarting']);

export class Fleet {
  /** @param {string} root topic root, e.g. "tether" */
  constructor(root) {
    this.root = root;
    this.base = root + '/v1/';
    /** @type {Map<string, Device>} */
    this.devices = new Map();
    /** @type {Map<string, object>} job id → protocol.JobStatus */
    this.jobs = new Map();
    /** @type {Map<string, object>} job id → protocol.JobHistory */
    this.history = new Map();
    /** @type {object|null} protocol.FleetSummary, when the planner publishes one */
    this.summary = null;
    /** @type {FeedItem[]} newest first */
    this.feed = [];
    /** Device ids whose last report carries an error. */
    this.erroring = new Set();
    /** Device ids whose last report has a failed allocation. */
    this.failing = new Set();
    this.messages = 0;
    this.malformed = 0;
    this.lastMalformed = '';
    this.lastMessageAt = 0;
    /** Filters and topics the broker refused to let this page subscribe to. */
    this.denied = new Set();
    // Bumped on every change of their part. membership: devices added or
    // removed; devices: anything about any device; access: denied.
    this.v = { devices: 0, membership: 0, jobs: 0, summary: 0, feed: 0, access: 0 };
  }

  /**
   * filters are the wildcard filters a dashboard subscribes to: exactly the
   * status topics a viewer token may read, nothing broader, so that a viewer
   * sees all it is allowed to and an operator the same (the desired state
   * of a device, which viewers may not read, only per device: see
   * desiredTopic). The last ones matter least and come last: the page
   * subscribes in this order.
   */
  filters() {
    const b = this.base;
    return [b + 'fleet/summary', b + 'jobs/+/status', b + 'devices/+/presence', b + 'devices/+/facts',
      b + 'devices/+/reported', b + 'devices/+/events', b + 'devices/+/scheduling', b + 'jobs/+/history'];
  }

  desiredTopic(device) { return this.base + 'devices/' + device + '/desired'; }

  /** filterOf is the filter of filters() (or desiredTopic) that delivers messages of a kind ("desired" needs the device). */
  filterOf(kind, device = '') {
    const b = this.base;
    switch (kind) {
      case 'summary': return b + 'fleet/summary';
      case 'jobstatus': return b + 'jobs/+/status';
      case 'history': return b + 'jobs/+/history';
      case 'desired': return this.desiredTopic(device);
      default: return b + 'devices/+/' + kind;
    }
  }

  /**
   * setAccess records the broker's answer to a subscription of filter: a
   * refused one is shown as "not permitted" rather than waited for.
   */
  setAccess(filter, granted) {
    if (granted === !this.denied.has(filter)) return;
    if (granted) this.denied.delete(filter);
    else this.denied.add(filter);
    this.v.access++;
  }

  /** deniedKind reports whether the broker refused the filter of a kind (see filterOf). */
  deniedKind(kind, device = '') {
    return this.denied.size > 0 && this.denied.has(this.filterOf(kind, device));
  }

  /**
   * parseTopic splits a topic under this root into its kind and identifier.
   * @returns {{kind: string, id: string} | null}
   */
  parseTopic(topic) {
    if (!topic.startsWith(this.base)) return null;
    const p = topic.slice(this.base.length).split('/');
    if (p.length === 2 && p[0] === 'fleet' && p[1] === 'summary') return { kind: 'summary', id: '' };
    if (p.length === 3 && p[0] === 'jobs' && p[2] === 'status' && p[1]) return { kind: 'jobstatus', id: p[1] };
    if (p.length === 3 && p[0] === 'jobs' && p[2] === 'history' && p[1]) return { kind: 'history', id: p[1] };
    if (p.length === 3 && p[0] === 'devices' && p[1] && DEVICE_KINDS.has(p[2])) return { kind: p[2], id: p[1] };
    return null;
  }

  /**
   * apply folds one message into the model.
   * @param {string} topic
   * @param {Uint8Array|string} payload
   * @param {boolean} retained true when the broker sent it because we subscribed
   * @param {number} now receipt time, ms since the epoch
   * @returns {boolean} whether the model understood the message
   */
  apply(topic, payload, retained = false, now = Date.now()) {
    this.messages++;
    this.lastMessageAt = now;
    const t = this.parseTopic(topic);
    if (!t) return false;
    const text = typeof payload === 'string' ? payload : decoder.decode(payload);
    let msg = null;
    if (text !== '') {
      try {
        msg = JSON.parse(text);
      } catch {
        msg = undefined;
      }
      if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
        this.malformed++;
        this.lastMalformed = topic;
        return false;
      }
    }
    switch (t.kind) {
      case 'summary':
        this.summary = msg;
        this.v.summary++;
        return true;
      case 'jobstatus':
        if (msg) this.jobs.set(t.id, msg);
        else this.jobs.delete(t.id);
        this.v.jobs++;
        return true;
      case 'history':
        if (msg) this.history.set(t.id, msg);
        else this.history.delete(t.id);
        this.v.jobs++;
        return true;
      case 'events':
        if (msg) this.#event(t.id, msg, now);
        return !!msg;
      default:
        this.#devicePart(t.id, t.kind, msg, retained, now);
        return true;
    }
  }

  #device(id) {
    let d = this.devices.get(id);
    if (!d) {
      d = newDevice(id);
      this.devices.set(id, d);
      this.v.membership++;
    }
    return d;
  }

  #devicePart(id, kind, msg, retained, now) {
    if (!msg && !this.devices.has(id)) return;
    const d = this.#device(id);
    const prev = d[kind];
    d[kind] = msg;
    d.rev++;
    this.v.devices++;
    if (kind === 'facts') d.search = searchText(d);
    if (kind === 'reported') {
      if (msg && msg.error) this.erroring.add(id);
      else this.erroring.delete(id);
      if (msg && (msg.allocations || []).some((a) => a.state === 'failed')) this.failing.add(id);
      else this.failing.delete(id);
    }
    if (kind === 'presence' && msg && !retained && msg.status !== prev?.status) {
      // A live change, not the state found on subscribing.
      this.#pushFeed({
        key: 'p:' + id + ':' + msg.status + ':' + msg.since, device: id, type: msg.status, presence: true,
        time: msg.since || new Date(now).toISOString(), message: msg.version ? 'edged ' + msg.version : '',
      });
    }
    if (!d.presence && !d.facts && !d.reported && !d.desired && !d.scheduling && d.events.length === 0) {
      this.devices.delete(id);
      this.erroring.delete(id);
      this.failing.delete(id);
      this.v.membership++;
    }
  }

  #event(id, e, now) {
    const d = this.#device(id);
    // QoS 1 may deliver an event twice; seq numbers are per device.
    if (d.events.some((x) => x.seq === e.seq && x.time === e.time && x.type === e.type)) return;
    const item = { ...e, device: id, key: 'e:' + id + ':' + e.seq + ':' + e.time, time: e.time || new Date(now).toISOString() };
    d.events.unshift(item);
    if (d.events.length > DEVICE_EVENTS_CAP) d.events.length = DEVICE_EVENTS_CAP;
    d.rev++;
    this.v.devices++;
    this.#pushFeed(item);
  }

  #pushFeed(item) {
    this.feed.unshift(item);
    if (this.feed.length > FEED_CAP) this.feed.length = FEED_CAP;
    this.v.feed++;
  }

  /**
   * missingTopics lists the retained device topics that a device known here
   * should have but whose message has not arrived: edged publishes presence,
   * facts and reported together, so a device with one and not another most
   * likely lost a message on the way.
   */
  missingTopics() {
    const out = [];
    for (const d of this.devices.values()) {
      const have = (d.presence ? 1 : 0) + (d.facts ? 1 : 0) + (d.reported ? 1 : 0);
      if (have === 0 || have === 3) continue;
      for (const k of ['presence', 'facts', 'reported']) if (!d[k]) out.push(this.base + 'devices/' + d.id + '/' + k);
    }
    return out;
  }

  /**
   * gaps says what to ask the broker for again after subscribing: exact
   * topics missing (missingTopics), and the presence filter again when the
   * planner's fleet summary counts more devices than arrived here.
   */
  gaps() {
    const want = this.summary?.devices?.total ?? 0;
    return {
      topics: this.missingTopics(),
      refilters: want > this.devices.size ? [this.base + 'devices/+/presence'] : [],
    };
  }

  /** forgetDesired drops a device's desired document once the view stops watching it. */
  forgetDesired(id) {
    const d = this.devices.get(id);
    if (d && d.desired) {
      d.desired = null;
      d.rev++;
      this.v.devices++;
    }
  }

  /**
   * counts is the device overview: the planner's fleet summary when it
   * publishes one, else counted here from the device topics.
   */
  counts() {
    if (this.summary && this.summary.devices) {
      return { source: 'summary', updatedAt: this.summary.updated_at, ...normCounts(this.summary.devices) };
    }
    return { source: 'browser', ...countDevices(this.devices.values()) };
  }

  /** jobBriefs lists every job with its state and counts, sorted by id. */
  jobBriefs() {
    if (this.jobs.size > 0 || !this.summary || !Array.isArray(this.summary.jobs)) {
      return [...this.jobs.values()].sort(byJob);
    }
    return [...this.summary.jobs].sort(byJob);
  }

  /**
   * failures lists what needs attention, most severe first: rejected or
   * degraded jobs, failed allocations, device errors, then recent failure
   * events.
   */
  failures(limit = 20) {
    const out = [];
    const seen = new Set(); // allocation ids listed
    for (const j of [...this.jobs.values()].sort(byJob)) {
      if (j.state === 'invalid' || (j.errors && j.errors.length)) {
        out.push({ kind: 'job', job: j.job, type: 'rejected', message: (j.errors || []).map(fieldError).join('; ') });
      }
      for (const g of j.groups || []) {
        if (g.unplaced) out.push({ kind: 'job', job: j.job, type: 'unplaced', message: g.name + ': ' + g.unplaced });
      }
      for (const a of j.allocations || []) {
        if (a.state === 'failed') {
          out.push({ kind: 'alloc', job: j.job, device: a.device, alloc: a.id, type: 'failed', message: a.message || '' });
          seen.add(a.id);
        }
      }
    }
    // Failed allocations as devices report them, also of jobs without a status.
    for (const id of [...this.failing].sort()) {
      if (out.length >= limit) break;
      for (const a of this.devices.get(id)?.reported?.allocations || []) {
        if (a.state !== 'failed' || seen.has(a.id)) continue;
        const t = (a.tasks || []).find((x) => x.state === 'failed');
        out.push({ kind: 'alloc', job: a.job, device: id, alloc: a.id, type: 'failed', task: t?.name, message: t?.message || '' });
        seen.add(a.id);
      }
    }
    for (const id of [...this.erroring].sort().slice(0, limit)) {
      const d = this.devices.get(id);
      out.push({ kind: 'device', device: id, type: 'error', message: d?.reported?.error || '', time: d?.reported?.time });
    }
    for (const e of this.feed) {
      if (out.length >= limit) break;
      if (e.presence) continue;
      if (FAILURE_EVENTS.has(e.type) || (e.type === 'exited' && e.exit_code)) out.push({ kind: 'event', ...e });
    }
    return out.slice(0, limit);
  }
}

const DEVICE_KINDS = new Set(['presence', 'facts', 'reported', 'events', 'desired', 'scheduling']);

/**
 * @typedef {{id: string, presence: object|null, facts: object|null, reported: object|null,
 *   desired: object|null, scheduling: object|null, events: object[], rev: number, search: string}} Device
 * @typedef {{key: string, device: string, type: string, time: string, presence?: boolean,
 *   job?: string, task?: string, alloc?: string, exit_code?: number, message?: string}} FeedItem
 */

function newDevice(id) {
  return { id, presence: null, facts: null, reported: null, desired: null, scheduling: null, events: [], rev: 0, search: id.toLowerCase() };
}

/** statusOf is a device's presence status, or "unknown" before any presence message. */
export function statusOf(d) {
  const s = d.presence?.status;
  return s === 'online' || s === 'offline' ? s : 'unknown';
}

/**
 * schedulingOf says whether the planner places new allocations on a device,
 * from the operator's protocol.Scheduling: "draining" (its allocations are
 * moved away), "ineligible" (they stay, nothing new comes), else
 * "eligible" (also when no scheduling message exists).
 */
export function schedulingOf(d) {
  const s = d.scheduling;
  if (s?.drain) return 'draining';
  if (s && s.eligible === false) return 'ineligible';
  return 'eligible';
}

/** labelPairs lists a device's labels as "key=value", sorted. */
export function labelPairs(d) {
  const l = d.facts?.labels;
  return l ? Object.keys(l).sort().map((k) => k + '=' + l[k]) : [];
}

function searchText(d) {
  return [d.id, d.facts?.hostname || '', ...labelPairs(d)].join(' ').toLowerCase();
}

/** countDevices counts devices like the planner's fleet summary does. */
export function countDevices(devices) {
  const c = { total: 0, online: 0, offline: 0, unknown: 0, by_arch: {}, by_label: {} };
  for (const d of devices) {
    c.total++;
    c[statusOf(d)]++;
    if (!d.facts) continue;
    const arch = d.facts.arch || '';
    c.by_arch[arch] = (c.by_arch[arch] || 0) + 1;
    for (const [k, v] of Object.entries(d.facts.labels || {})) {
      const m = (c.by_label[k] ||= {});
      m[v] = (m[v] || 0) + 1;
    }
  }
  return c;
}

function normCounts(s) {
  return {
    total: s.total | 0, online: s.online | 0, offline: s.offline | 0, unknown: s.unknown | 0,
    by_arch: s.by_arch || {}, by_label: s.by_label || {},
  };
}

/** filterDevices returns the ids, in the given order, of the devices that match. */
export function filterDevices(fleet, ids, { text = '', status = '', label = '' }) {
  const q = text.trim().toLowerCase();
  let eq = -1;
  let lk = '';
  let lv = '';
  if (label) {
    eq = label.indexOf('=');
    lk = label.slice(0, eq);
    lv = label.slice(eq + 1);
  }
  if (!q && !status && !label) return ids;
  const out = [];
  for (const id of ids) {
    const d = fleet.devices.get(id);
    if (!d) continue;
    if (status && statusOf(d) !== status) continue;
    if (label && d.facts?.labels?.[lk] !== lv) continue;
    if (q && !d.search.includes(q)) continue;
    out.push(id);
  }
  return out;
}

/** allocSummary says how many allocations a device reports, by state. */
export function allocSummary(d) {
  const allocs = d.reported?.allocations || [];
  if (allocs.length === 0) return '';
  const by = {};
  for (const a of allocs) by[a.state] = (by[a.state] || 0) + 1;
  return Object.keys(by).sort().map((s) => by[s] + ' ' + s).join(', ');
}

/**
 * allocsNotShown counts the allocations of a job status (protocol.JobStatus)
 * that a card drawing the first `shown` does not: those past `shown`, and
 * those the planner left out of the status (allocations_omitted; it lists
 * at most protocol.MaxStatusAllocs, the ones needing attention first).
 */
export function allocsNotShown(j, shown) {
  return Math.max(0, (j.allocations || []).length - shown) + (j.allocations_omitted | 0);
}

/** Rollout states the overview marks a job with: a rollout someone may have to act on. */
export const ROLLOUT_MARKED = new Set(['running', 'paused', 'failed']);

/** rolloutMark is the state of a job's rollout when the overview marks it, else "". */
export function rolloutMark(j) {
  const s = j?.rollout?.state;
  return ROLLOUT_MARKED.has(s) ? s : '';
}

/**
 * rolloutParts splits one group of a rollout (protocol.RolloutGroup) into
 * the disjoint parts its progress bar draws, in this order: healthy,
 * updating (updated, health not decided yet, device online), unhealthy,
 * pending (offline), waiting (not updated yet). Updated counts healthy,
 * unhealthy and pending (offline) allocations too: the planner counts an
 * allocation updated while its device is offline as pending until edged
 * judges it (planner/core). Counts that do not add up (the protocol's golden
 * jobstatus-rollout.json has updated 2, healthy 2, pending 1) are clamped:
 * the bar grows, never past its end, and no part is negative.
 */
export function rolloutParts(g) {
  const n = (x) => Math.max(0, x | 0);
  const healthy = n(g.healthy);
  const unhealthy = n(g.unhealthy);
  const pendingOffline = n(g.pending_offline);
  const updating = Math.max(0, n(g.updated) - healthy - unhealthy - pendingOffline);
  const reached = healthy + updating + unhealthy + pendingOffline;
  const total = Math.max(n(g.total), reached);
  return { total, healthy, updating, unhealthy, pendingOffline, waiting: total - reached };
}

/** rolloutText says a rollout group's progress in words, for screen readers and tooltips. */
export function rolloutText(g) {
  const p = rolloutParts(g);
  const out = [`${p.healthy} of ${p.total} healthy`, `${g.updated | 0} updated`];
  if (p.unhealthy) out.push(`${p.unhealthy} unhealthy`);
  if (p.pendingOffline) out.push(`${p.pendingOffline} pending (offline)`);
  if (g.canaries) out.push(`${g.canaries} ${g.canaries === 1 ? 'canary' : 'canaries'}, ${g.promoted ? 'promoted' : 'not promoted'}`);
  return out.join(', ');
}

export function fieldError(e) {
  return e.path ? e.path + ': ' + e.message : e.message;
}

function byJob(a, b) {
  return a.job < b.job ? -1 : a.job > b.job ? 1 : 0;
}
