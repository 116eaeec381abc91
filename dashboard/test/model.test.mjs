// Unit tests of the page's model (static/js/model.js), fed with the
// protocol's golden messages. No browser, no broker.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Fleet, filterDevices, countDevices, allocSummary, allocsNotShown, statusOf, schedulingOf, rolloutMark, rolloutParts, rolloutText, FEED_CAP } from '../static/js/model.js';

const golden = (name) => readFileSync(new URL(`../../protocol/testdata/golden/${name}.json`, import.meta.url));
const enc = (v) => new TextEncoder().encode(JSON.stringify(v));

test('topics are parsed under a multi-level root only', () => {
  const f = new Fleet('acme/prod');
  assert.deepEqual(f.parseTopic('acme/prod/v1/devices/pi-07/facts'), { kind: 'facts', id: 'pi-07' });
  assert.deepEqual(f.parseTopic('acme/prod/v1/jobs/hello/status'), { kind: 'jobstatus', id: 'hello' });
  assert.deepEqual(f.parseTopic('acme/prod/v1/fleet/summary'), { kind: 'summary', id: '' });
  for (const t of ['tether/v1/devices/pi-07/facts', 'acme/prod/v1/jobs/hello', 'acme/prod/v1/devices/pi-07/nope',
    'acme/prod/v1/devices//facts', 'acme/prod/v2/fleet/summary', 'acme/prod/v1/devices/a/b/facts']) {
    assert.equal(f.parseTopic(t), null, t);
  }
  assert.ok(f.filters().every((x) => x.startsWith('acme/prod/v1/')));
  assert.ok(!f.filters().some((x) => x.includes('desired')), 'desired is subscribed per selected device only');
});

test('golden messages fold into one device and one job', () => {
  const f = new Fleet('tether');
  for (const kind of ['presence', 'facts', 'reported', 'desired']) {
    assert.ok(f.apply(`tether/v1/devices/pi-07/${kind}`, golden(kind), true), kind);
  }
  assert.ok(f.apply('tether/v1/devices/pi-07/events', golden('event'), false));
  assert.ok(f.apply('tether/v1/jobs/hello/status', golden('jobstatus'), true));
  assert.ok(f.apply('tether/v1/fleet/summary', golden('fleetsummary'), true));

  const d = f.devices.get('pi-07');
  assert.equal(statusOf(d), 'online');
  assert.equal(d.facts.arch, 'arm64');
  assert.equal(d.reported.observed_generation, 4);
  assert.equal(d.desired.generation, 4);
  assert.equal(allocSummary(d), '1 running');
  assert.equal(d.events.length, 1);
  assert.equal(f.feed[0].type, 'restarting');
  assert.equal(f.jobs.get('hello').state, 'running');

  const c = f.counts();
  assert.equal(c.source, 'summary');
  assert.deepEqual([c.total, c.online, c.offline, c.unknown], [3, 2, 1, 0]);
  // The job status, with allocations, wins over the summary's brief.
  assert.ok(f.jobBriefs()[0].allocations);
  // restarting is a failure event; the job's unplaced group is listed too.
  const kinds = f.failures().map((x) => x.type);
  assert.deepEqual(kinds, ['unplaced', 'restarting']);
});

test('without a fleet summary the browser counts like the planner', () => {
  const f = new Fleet('tether');
  const facts = (id, arch, site) => enc({ device: id, arch, os: 'linux', cpu_cores: 1, cpu_mhz: 1, memory_mb: 1, drivers: [], labels: { site } });
  f.apply('tether/v1/devices/a/facts', facts('a', 'amd64', 'berlin'));
  f.apply('tether/v1/devices/a/presence', enc({ device: 'a', status: 'online', since: '2026-01-01T00:00:00Z' }));
  f.apply('tether/v1/devices/b/facts', facts('b', 'arm64', 'berlin'));
  f.apply('tether/v1/devices/b/presence', enc({ device: 'b', status: 'offline', since: '2026-01-01T00:00:00Z' }));
  f.apply('tether/v1/devices/c/facts', facts('c', 'arm64', 'paris'));
  const c = f.counts();
  assert.equal(c.source, 'browser');
  assert.deepEqual(c, {
    source: 'browser', total: 3, online: 1, offline: 1, unknown: 1,
    by_arch: { amd64: 1, arm64: 2 }, by_label: { site: { berlin: 2, paris: 1 } },
  });
  assert.deepEqual(countDevices(f.devices.values()).by_arch, { amd64: 1, arm64: 2 });

  const ids = [...f.devices.keys()].sort();
  assert.deepEqual(filterDevices(f, ids, { status: 'unknown' }), ['c']);
  assert.deepEqual(filterDevices(f, ids, { label: 'site=berlin' }), ['a', 'b']);
  assert.deepEqual(filterDevices(f, ids, { text: 'PARIS' }), ['c']);
  assert.deepEqual(filterDevices(f, ids, { text: 'b', status: 'offline' }), ['b']);

  // An empty retained payload deletes; a device with nothing left goes.
  f.apply('tether/v1/devices/c/facts', '');
  assert.ok(!f.devices.has('c'));
  f.apply('tether/v1/devices/zz/facts', '');
  assert.ok(!f.devices.has('zz'), 'a delete does not create a device');
});

test('live presence changes reach the feed, retained ones do not', () => {
  const f = new Fleet('tether');
  const p = (status, since) => enc({ device: 'a', status, since });
  f.apply('tether/v1/devices/a/presence', p('online', '2026-01-01T00:00:00Z'), true);
  assert.equal(f.feed.length, 0, 'state found on subscribing is not news');
  f.apply('tether/v1/devices/a/presence', p('offline', '2026-01-01T00:01:00Z'), false);
  f.apply('tether/v1/devices/a/presence', p('offline', '2026-01-01T00:01:00Z'), false);
  assert.deepEqual(f.feed.map((e) => e.type), ['offline']);
});

test('events are deduplicated and the feed is capped', () => {
  const f = new Fleet('tether');
  const ev = (seq) => enc({ device: 'a', seq, time: `2026-01-01T00:00:${String(seq % 60).padStart(2, '0')}Z`, type: 'started' });
  f.apply('tether/v1/devices/a/events', ev(1));
  f.apply('tether/v1/devices/a/events', ev(1));
  assert.equal(f.feed.length, 1);
  for (let i = 2; i < FEED_CAP + 50; i++) f.apply('tether/v1/devices/a/events', ev(i));
  assert.equal(f.feed.length, FEED_CAP);
  assert.equal(f.feed[0].seq, FEED_CAP + 49, 'newest first');
  assert.ok(f.devices.get('a').events.length <= 20);
});

test('malformed payloads are counted and ignored', () => {
  const f = new Fleet('tether');
  for (const bad of ['{', '[]', '42', 'null', '"x"']) {
    assert.equal(f.apply('tether/v1/devices/a/facts', bad), false, bad);
  }
  assert.equal(f.malformed, 5);
  assert.equal(f.devices.size, 0);
});

test('failed allocations reported by devices are failures', () => {
  const f = new Fleet('tether');
  f.apply('tether/v1/devices/a/reported', enc({
    device: 'a', observed_generation: 1, time: '2026-01-01T00:00:00Z',
    allocations: [{ id: 'j.g.0-x', job: 'j', job_version: 1, group: 'g', state: 'failed', tasks: [{ name: 't', state: 'failed', restarts: 3, message: 'exited with code 1' }] }],
  }));
  assert.deepEqual(f.failures().map((x) => [x.kind, x.device, x.alloc, x.task, x.message]), [['alloc', 'a', 'j.g.0-x', 't', 'exited with code 1']]);
  f.apply('tether/v1/devices/a/reported', enc({ device: 'a', observed_generation: 2, time: '2026-01-01T00:00:01Z', allocations: [] }));
  assert.deepEqual(f.failures(), []);
});

test('gaps name the retained topics that did not arrive', () => {
  const f = new Fleet('tether');
  f.apply('tether/v1/devices/a/presence', golden('presence'), true);
  f.apply('tether/v1/devices/b/presence', golden('presence'), true);
  f.apply('tether/v1/devices/b/facts', golden('facts'), true);
  f.apply('tether/v1/devices/b/reported', golden('reported'), true);
  f.apply('tether/v1/devices/c/events', golden('event'), false);
  assert.deepEqual(f.gaps(), { topics: ['tether/v1/devices/a/facts', 'tether/v1/devices/a/reported'], refilters: [] });
  // The summary counts 3 devices, and c is known from an event only.
  f.apply('tether/v1/fleet/summary', golden('fleetsummary'), true);
  assert.deepEqual(f.gaps().refilters, []);
  f.apply('tether/v1/devices/c/events', enc({ device: 'c', seq: 99, time: '2026-01-02T03:04:06Z', type: 'started' }), false);
  f.apply('tether/v1/fleet/summary', enc({ devices: { total: 4 }, jobs: [], updated_at: '2026-01-02T03:04:05Z' }), true);
  assert.deepEqual(f.gaps().refilters, ['tether/v1/devices/+/presence']);
});

test('a job status with a rollout: marker, bar parts and words', () => {
  const f = new Fleet('tether');
  assert.ok(f.apply('tether/v1/jobs/hello/status', golden('jobstatus-rollout'), true));
  const j = f.jobs.get('hello');
  assert.equal(j.allocations[0].health, 'healthy');
  assert.equal(rolloutMark(j), 'paused');
  assert.equal(f.jobBriefs()[0].rollout.state, 'paused', 'the overview lists the status, with its rollout');
  // Golden: total 40, canaries 2, updated 3 (2 healthy, 1 pending offline).
  const g = j.rollout.groups[0];
  assert.deepEqual(rolloutParts(g), { total: 40, healthy: 2, updating: 0, unhealthy: 0, pendingOffline: 1, waiting: 37 });
  assert.equal(rolloutText(g), '2 of 40 healthy, 3 updated, 1 pending (offline), 2 canaries, not promoted');

  for (const [state, mark] of [['running', 'running'], ['paused', 'paused'], ['failed', 'failed'], ['successful', ''], ['', ''], [undefined, '']]) {
    assert.equal(rolloutMark({ rollout: { state } }), mark, String(state));
  }
  assert.equal(rolloutMark({}), '', 'no rollout, no marker');
  assert.equal(rolloutMark(undefined), '');
});

test('rollout bar parts are disjoint and never pass the end of the bar', () => {
  const sum = (p) => p.healthy + p.updating + p.unhealthy + p.pendingOffline + p.waiting;
  const cases = [
    // [group, parts]
    // Updated counts the healthy, unhealthy and pending (offline) ones too.
    [{ total: 10, updated: 7, healthy: 3, unhealthy: 1, pending_offline: 2 }, { total: 10, healthy: 3, updating: 1, unhealthy: 1, pendingOffline: 2, waiting: 3 }],
    [{ total: 10, updated: 3, healthy: 0, unhealthy: 0, pending_offline: 3 }, { total: 10, healthy: 0, updating: 0, unhealthy: 0, pendingOffline: 3, waiting: 7 }],
    [{ total: 4, updated: 4, healthy: 4, unhealthy: 0, pending_offline: 0 }, { total: 4, healthy: 4, updating: 0, unhealthy: 0, pendingOffline: 0, waiting: 0 }],
    [{ name: 'new', total: 0, updated: 0, healthy: 0, unhealthy: 0, pending_offline: 0 }, { total: 0, healthy: 0, updating: 0, unhealthy: 0, pendingOffline: 0, waiting: 0 }],
    // Counts that do not add up (a status from a newer planner, say): the bar grows, never overflows.
    [{ total: 3, updated: 2, healthy: 3, unhealthy: 1, pending_offline: 1 }, { total: 5, healthy: 3, updating: 0, unhealthy: 1, pendingOffline: 1, waiting: 0 }],
    [{ total: -1, healthy: -2 }, { total: 0, healthy: 0, updating: 0, unhealthy: 0, pendingOffline: 0, waiting: 0 }],
  ];
  for (const [g, want] of cases) {
    const p = rolloutParts(g);
    assert.deepEqual(p, want, JSON.stringify(g));
    assert.equal(sum(p), p.total, JSON.stringify(g));
  }
  assert.equal(rolloutText({ total: 40, updated: 20, healthy: 14, unhealthy: 3, pending_offline: 2, canaries: 1, promoted: true }),
    '14 of 40 healthy, 20 updated, 3 unhealthy, 2 pending (offline), 1 canary, promoted');
});

test('job history and device scheduling fold in, and go with an empty payload', () => {
  const f = new Fleet('tether');
  assert.deepEqual(f.parseTopic('tether/v1/jobs/hello/history'), { kind: 'history', id: 'hello' });
  assert.deepEqual(f.parseTopic('tether/v1/devices/pi-07/scheduling'), { kind: 'scheduling', id: 'pi-07' });

  assert.ok(f.apply('tether/v1/jobs/hello/history', golden('history'), true));
  assert.equal(f.history.get('hello').versions[0].version, 2);
  assert.equal(f.jobs.size, 0, 'a history is no job status');
  assert.ok(f.apply('tether/v1/jobs/hello/history', '', true));
  assert.equal(f.history.size, 0);

  f.apply('tether/v1/devices/pi-07/presence', golden('presence'), true);
  const d = f.devices.get('pi-07');
  assert.equal(schedulingOf(d), 'eligible', 'no scheduling message: eligible');
  assert.ok(f.apply('tether/v1/devices/pi-07/scheduling', golden('scheduling'), true));
  assert.equal(schedulingOf(d), 'draining');
  f.apply('tether/v1/devices/pi-07/scheduling', enc({ device: 'pi-07', eligible: false }), true);
  assert.equal(schedulingOf(d), 'ineligible');
  f.apply('tether/v1/devices/pi-07/scheduling', '', true);
  assert.equal(schedulingOf(d), 'eligible');

  // A device known only by its scheduling is listed, and goes with it.
  f.apply('tether/v1/devices/spare/scheduling', enc({ device: 'spare', drain: true }), true);
  assert.equal(schedulingOf(f.devices.get('spare')), 'draining');
  f.apply('tether/v1/devices/spare/scheduling', '', true);
  assert.ok(!f.devices.has('spare'));
});

test('refused subscriptions are recorded per filter, and a grant clears them', () => {
  const f = new Fleet('tether');
  assert.equal(f.deniedKind('desired', 'pi-07'), false);
  const v = f.v.access;
  f.setAccess(f.desiredTopic('pi-07'), false);
  assert.equal(f.v.access, v + 1);
  assert.ok(f.deniedKind('desired', 'pi-07'));
  assert.ok(!f.deniedKind('desired', 'pi-08'), 'per device');
  f.setAccess(f.desiredTopic('pi-07'), false);
  assert.equal(f.v.access, v + 1, 'no change, no new version');
  f.setAccess('tether/v1/jobs/+/history', false);
  assert.ok(f.deniedKind('history'));
  for (const kind of ['summary', 'jobstatus', 'presence', 'facts', 'reported', 'events', 'scheduling']) {
    assert.ok(!f.deniedKind(kind), kind);
    assert.ok(f.filters().includes(f.filterOf(kind)), `filterOf(${kind}) is one of filters()`);
  }
  f.setAccess(f.desiredTopic('pi-07'), true);
  assert.ok(!f.deniedKind('desired', 'pi-07'));
});

test('a job card counts the allocations it does not draw, the planner left out included', () => {
  const omitted = JSON.parse(golden('jobstatus-omitted'));
  assert.equal(allocsNotShown(omitted, 100), 1, 'the one the status left out');
  assert.equal(allocsNotShown(omitted, 1), 2, 'and one past those drawn');
  assert.equal(allocsNotShown(JSON.parse(golden('jobstatus')), 100), 0);
  assert.equal(allocsNotShown({ job: 'x', allocations: Array(150).fill({}) }, 100), 50);
});
