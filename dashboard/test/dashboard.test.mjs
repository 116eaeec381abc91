// Browser end-to-end tests of the dashboard: the real `tether dev` (planner,
// embedded broker and a local edged), real CLI commands, and Debian's
// Chromium driven by playwright-core. Run by e2e/dashboard_test.go with
// TETHER_BIN set, or by hand:
//
//	TETHER_BIN=/tmp/tether node --test dashboard/test/
//
// Screenshots go to ARTIFACTS_DIR (default: a new temporary folder, printed).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { artifactsDir, freePort, httpStatus, launchBrowser, run, startDev, tetherBin } from '../testkit/harness.mjs';

const ARTIFACTS = artifactsDir();
console.log(`screenshots: ${ARTIFACTS}`);

const WAIT = 30_000; // every wait for the page; passing runs take a fraction

/** cleaner returns defer(fn): fn runs when test t ends, even on failure, last deferred first. */
function cleaner(t) {
  const fns = [];
  t.after(async () => {
    for (const fn of fns.reverse()) {
      try {
        await fn();
      } catch (err) {
        console.log(`cleanup: ${err.message}`);
      }
    }
  });
  return (fn) => fns.push(fn);
}

const log = (line) => console.log(line);
const quiet = () => {};

async function shot(page, name) {
  const path = join(ARTIFACTS, name + '.png');
  await page.screenshot({ path });
  console.log(`screenshot ${path}`);
}

/** sel builds a [data-testid] selector with optional data-* attributes. */
function sel(testid, data = {}) {
  return `[data-testid="${testid}"]` + Object.entries(data).map(([k, v]) => `[data-${k}="${v}"]`).join('');
}

async function servesDashboard(http) {
  const status = await httpStatus(`http://127.0.0.1:${http}/`);
  assert.equal(status, 200, `GET / on tether dev's HTTP listener answered ${status}: is dashboard.Handler wired into the server?`);
}

test('dashboard follows a device and a job, and recovers from a broker restart', { timeout: 150_000 }, async (t) => {
  const defer = cleaner(t);
  const t0 = Date.now();
  const [mqttPort, wsPort, httpPort] = [await freePort(), await freePort(), await freePort()];
  const dataDir = mkdtempSync(join(tmpdir(), 'tether-dash-e2e-'));
  defer(() => rmSync(dataDir, { recursive: true, force: true }));
  const devOpts = { dataDir, mqtt: mqttPort, ws: wsPort, http: httpPort, extra: ['--device-id', 'dash-dev', '--label', 'site=lab'], log: quiet };
  let dev = await startDev(devOpts);
  defer(() => dev.stop());
  const broker = ['--broker', `mqtt://127.0.0.1:${mqttPort}`];
  await servesDashboard(httpPort);

  const { context, page, errors, close } = await launchBrowser({ log });
  defer(close);
  await page.goto(`http://127.0.0.1:${httpPort}/`);
  await page.waitForSelector(sel('connection', { state: 'connected' }), { timeout: WAIT });

  // Overview: the local device is counted online.
  await page.waitForFunction(() => Number(document.querySelector('[data-testid="count-online"]').textContent) >= 1, null, { timeout: WAIT });
  await page.waitForSelector(`${sel('by-label')} >> text=lab`, { timeout: WAIT });
  await shot(page, '01-overview');

  // Devices: find it, open its details.
  await page.click(sel('tab-devices'));
  await page.fill(sel('device-search'), 'dash');
  const row = sel('device-row', { device: 'dash-dev', status: 'online' });
  await page.waitForSelector(row, { timeout: WAIT });
  await page.click(`${row} a`);
  await page.waitForSelector(`${sel('device-detail', { device: 'dash-dev' })} ${sel('device-facts')}`, { timeout: WAIT });
  const presence = await page.textContent(sel('device-presence'));
  assert.match(presence, /online since/);
  // The desired topic is subscribed for the selected device only.
  await page.waitForSelector(`${sel('device-generation')}:not([data-desired=""])`, { timeout: WAIT });
  await shot(page, '02-device');

  // A service job with the exec driver (no Podman needed). The process
  // ends by itself when the marker goes, should the test stop half-way.
  const work = mkdtempSync(join(tmpdir(), 'tether-dash-job-'));
  const marker = join(work, 'alive');
  writeFileSync(marker, '');
  defer(() => rmSync(work, { recursive: true, force: true }));
  const jobFile = join(work, 'dash-sleep.yaml');
  writeFileSync(jobFile, `id: dash-sleep
type: service
groups:
  - name: main
    count: 1
    tasks:
      - name: sleeper
        driver: exec
        config:
          command: ["/bin/sh", "-c", "while [ -e ${marker} ]; do sleep 1; done"]
        resources: {cpu: 10, memory: 8}
`);
  let r = await run(tetherBin(), ['job', 'run', jobFile, ...broker, '--timeout', '60s'], { log });
  assert.equal(r.code, 0, 'tether job run');

  await page.click(sel('tab-jobs'));
  const card = sel('job-card', { job: 'dash-sleep', state: 'running' });
  await page.waitForSelector(`${card} ${sel('job-alloc', { device: 'dash-dev', state: 'running' })}`, { timeout: WAIT });
  await shot(page, '03-job-running');

  r = await run(tetherBin(), ['job', 'stop', 'dash-sleep', ...broker, '--timeout', '60s'], { log });
  assert.equal(r.code, 0, 'tether job stop');
  await page.waitForSelector(sel('job-card', { job: 'dash-sleep', state: 'stopped' }), { timeout: WAIT });
  assert.equal(await page.locator(`${sel('job-card', { job: 'dash-sleep' })} ${sel('job-alloc')}`).count(), 0, 'a stopped job lists no allocations');
  await shot(page, '04-job-stopped');

  // The live feed saw the task start and stop.
  await page.click(sel('tab-events'));
  await page.waitForSelector(`${sel('event-feed')} ${sel('event-row', { type: 'started', device: 'dash-dev' })}`, { timeout: WAIT });
  await page.waitForSelector(`${sel('event-feed')} ${sel('event-row', { type: 'stopped', device: 'dash-dev' })}`, { timeout: WAIT });
  await shot(page, '05-events');

  // A rollout, as the planner carries it in the job status: synthetic
  // retained statuses published to tether dev's broker, running → paused
  // for promotion → failed and reverted.
  await followRollout(page, mqttPort, defer);

  // Power cut for the server: the page must say its link is down...
  await page.click(sel('tab-devices'));
  await dev.kill();
  await page.waitForSelector(sel('connection', { state: 'disconnected' }), { timeout: WAIT });
  await page.waitForSelector(`${sel('connection-banner')}:not([hidden])`, { timeout: WAIT });
  assert.match(await page.textContent(sel('connection-banner')), /Disconnected from the broker.*reconnecting/);
  await shot(page, '06-disconnected');

  // ...and come back by itself when the server does.
  dev = await startDev(devOpts);
  await page.waitForSelector(sel('connection', { state: 'connected' }), { timeout: WAIT });
  await page.waitForSelector(`${sel('connection-banner')}[hidden]`, { state: 'attached', timeout: WAIT });
  await page.waitForSelector(sel('device-row', { device: 'dash-dev', status: 'online' }), { timeout: WAIT });
  await shot(page, '07-reconnected');

  assert.deepEqual(errors, [], 'uncaught errors in the page');
  console.log(`flow test took ${((Date.now() - t0) / 1000).toFixed(1)} s`);
});

/**
 * rolloutStatus is a protocol.JobStatus of the system job dash-rollout at
 * version 7, whose rollout is in the given state with the given groups
 * (protocol.RolloutGroup), and three allocations: healthy, unhealthy and
 * not judged yet.
 */
function rolloutStatus(state, groups, extra = {}) {
  const now = new Date().toISOString();
  const started = new Date(Date.now() - 5 * 60_000).toISOString();
  const alloc = (id, group, device, health) => ({ id, group, device, version: 7, state: 'running', ...(health ? { health } : {}) });
  return {
    job: 'dash-rollout', state: 'running', version: 7, type: 'system',
    allocations: [
      alloc('dash-rollout.gw.0-aaa111', 'gw', 'dash-dev', 'healthy'),
      alloc('dash-rollout.gw.0-bbb222', 'gw', 'sim-canary-2', state === 'failed' ? 'unhealthy' : 'healthy'),
      alloc('dash-rollout.edge.0-ccc333', 'edge', 'sim-edge-1', ''),
    ],
    counts: { desired: 50, placed: 50, pending: 0, running: 50, complete: 0, failed: 0 },
    rollout: { version: 7, state, started_at: started, progress_at: now, groups, ...extra },
    updated_at: now,
  };
}

/** rolloutNumbers reads one group's counts as the page wrote them, in words and in data-*. */
async function rolloutNumbers(page, group) {
  const row = page.locator(`${sel('job-card', { job: 'dash-rollout' })} ${sel('rollout-group', { group })}`);
  const cell = (id) => row.locator(sel(id)).textContent();
  return {
    healthy: await cell('rollout-healthy'), updated: await cell('rollout-updated'), total: await cell('rollout-total'),
    unhealthy: await cell('rollout-unhealthy'), pendingOffline: await cell('rollout-pending-offline'),
    canaries: (await cell('rollout-canaries')).trim(), bar: await row.locator(sel('rollout-bar')).getAttribute('aria-valuetext'),
  };
}

async function followRollout(page, mqttPort, defer) {
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, { protocolVersion: 4, clean: true, clientId: 'dash-rollout-' + process.pid, reconnectPeriod: 0 });
  defer(() => client.endAsync());
  const topic = 'tether/v1/jobs/dash-rollout/status';
  const publish = (status) => client.publishAsync(topic, JSON.stringify(status), { qos: 1, retain: true });
  const card = (state) => sel('job-card', { job: 'dash-rollout', rollout: state });
  const rollout = (state) => `${card(state)} ${sel('job-rollout', { state, version: '7' })}`;

  // Running: the canaries of gw are being updated; edge has no canaries,
  // and one of its devices is offline. As the planner counts, updated
  // includes the healthy, unhealthy and pending (offline) allocations.
  await publish(rolloutStatus('running', [
    { name: 'gw', total: 40, canaries: 2, updated: 2, healthy: 1, unhealthy: 0, pending_offline: 0 },
    { name: 'edge', total: 10, updated: 3, healthy: 2, unhealthy: 0, pending_offline: 1 },
  ], { description: 'updating the 2 canaries of gw' }));
  await page.click(sel('tab-jobs'));
  await page.fill(sel('job-search'), 'dash-rollout');
  await page.waitForSelector(rollout('running'), { timeout: WAIT });
  assert.equal(await page.textContent(`${rollout('running')} ${sel('rollout-state')}`), 'running');
  assert.equal(await page.textContent(`${rollout('running')} ${sel('rollout-description')}`), 'updating the 2 canaries of gw');
  assert.equal(await page.locator(`${rollout('running')} ${sel('rollout-promote')}`).count(), 0, 'a running rollout asks for no promotion');
  assert.equal(await page.locator(`${rollout('running')} ${sel('rollout-reverted')}`).count(), 0);
  assert.deepEqual(await rolloutNumbers(page, 'gw'), { healthy: '1', updated: '2', total: '40', unhealthy: '0', pendingOffline: '0',
    canaries: '2 · not promoted', bar: '1 of 40 healthy, 2 updated, 2 canaries, not promoted' });
  assert.deepEqual(await rolloutNumbers(page, 'edge'), { healthy: '2', updated: '3', total: '10', unhealthy: '0', pendingOffline: '1',
    canaries: '—', bar: '2 of 10 healthy, 3 updated, 1 pending (offline)' });
  // The health column: judged allocations say so; undecided ones do not.
  const alloc = (id) => `${card('running')} ${sel('job-alloc', { alloc: id })} ${sel('alloc-health')}`;
  assert.equal((await page.textContent(alloc('dash-rollout.gw.0-aaa111'))).trim(), 'healthy');
  assert.equal((await page.textContent(alloc('dash-rollout.edge.0-ccc333'))).trim(), '—');
  await shot(page, '05a-rollout-running');

  // Paused: the canaries are healthy, and the page says how to promote.
  await publish(rolloutStatus('paused', [
    { name: 'gw', total: 40, canaries: 2, updated: 2, healthy: 2, unhealthy: 0, pending_offline: 0 },
    { name: 'edge', total: 10, updated: 5, healthy: 4, unhealthy: 0, pending_offline: 1 },
  ], { description: '2 canaries healthy: promote with `tether job promote dash-rollout`' }));
  await page.waitForSelector(rollout('paused'), { timeout: WAIT });
  assert.equal(await page.textContent(`${rollout('paused')} ${sel('rollout-state')}`), 'paused');
  assert.match(await page.textContent(`${rollout('paused')} ${sel('rollout-promote')}`), /tether job promote dash-rollout/);
  assert.deepEqual(await rolloutNumbers(page, 'gw'), { healthy: '2', updated: '2', total: '40', unhealthy: '0', pendingOffline: '0',
    canaries: '2 · not promoted', bar: '2 of 40 healthy, 2 updated, 2 canaries, not promoted' });
  assert.deepEqual(await rolloutNumbers(page, 'edge'), { healthy: '4', updated: '5', total: '10', unhealthy: '0', pendingOffline: '1',
    canaries: '—', bar: '4 of 10 healthy, 5 updated, 1 pending (offline)' });
  await shot(page, '05b-rollout-paused');

  // Failed after promotion: too many unhealthy, reverted to version 6.
  await publish(rolloutStatus('failed', [
    { name: 'gw', total: 40, canaries: 2, promoted: true, updated: 20, healthy: 14, unhealthy: 3, pending_offline: 2 },
    { name: 'edge', total: 10, updated: 10, healthy: 9, unhealthy: 0, pending_offline: 0 },
  ], { description: '3 of 20 updated allocations unhealthy: more than failure_ratio 0.1', reverted_to: 6 }));
  await page.waitForSelector(rollout('failed'), { timeout: WAIT });
  assert.equal(await page.textContent(`${rollout('failed')} ${sel('rollout-state')}`), 'failed');
  assert.equal(await page.getAttribute(rollout('failed'), 'data-reverted-to'), '6');
  assert.match(await page.textContent(`${rollout('failed')} ${sel('rollout-reverted', { version: '6' })}`), /Reverted to version 6\b/);
  assert.equal(await page.locator(`${rollout('failed')} ${sel('rollout-promote')}`).count(), 0, 'a failed rollout asks for no promotion');
  assert.deepEqual(await rolloutNumbers(page, 'gw'), { healthy: '14', updated: '20', total: '40', unhealthy: '3', pendingOffline: '2',
    canaries: '2 · promoted', bar: '14 of 40 healthy, 20 updated, 3 unhealthy, 2 pending (offline), 2 canaries, promoted' });
  assert.equal((await page.textContent(`${card('failed')} ${sel('job-alloc', { alloc: 'dash-rollout.gw.0-bbb222', health: 'unhealthy' })} ${sel('alloc-health')}`)).trim(), 'unhealthy');
  await shot(page, '05c-rollout-failed');

  // The overview marks the job, and only that one.
  await page.click(sel('tab-overview'));
  await page.waitForSelector(`${sel('overview-job', { job: 'dash-rollout' })} ${sel('overview-rollout', { state: 'failed' })}`, { timeout: WAIT });
  assert.equal(await page.textContent(sel('overview-rollout')), 'rollout failed');
  assert.equal(await page.locator(sel('overview-rollout')).count(), 1, 'jobs without a rollout are not marked');
  await shot(page, '05d-rollout-overview');

  // An empty retained payload deletes the status, and the job goes.
  await client.publishAsync(topic, '', { qos: 1, retain: true });
  await page.waitForSelector(sel('overview-job', { job: 'dash-rollout' }), { state: 'detached', timeout: WAIT });
  await page.click(sel('tab-jobs'));
  await page.fill(sel('job-search'), '');
}

// SIM is how many synthetic devices the load test publishes.
const SIM = 10_000;

function simDevice(i, now) {
  const id = 'sim-' + String(i).padStart(5, '0');
  const arch = ['amd64', 'arm64', 'arm'][i % 3];
  const site = ['berlin', 'paris', 'lisbon', 'oslo', 'rome', 'vienna', 'prague', 'madrid'][i % 8];
  const failing = i % 500 === 7;
  return {
    id,
    presence: { device: id, status: i % 10 === 3 ? 'offline' : 'online', since: now, version: 'v0.0.0-sim' },
    facts: {
      device: id, hostname: 'h' + i, arch, os: 'linux', kernel: '6.1.0', cpu_cores: 4, cpu_mhz: 4 * 1500,
      memory_mb: 2048 + (i % 4) * 1024, drivers: i % 2 ? ['exec', 'podman'] : ['exec'], labels: { site, ring: i % 20 ? 'stable' : 'canary' },
    },
    reported: {
      device: id, observed_generation: 1, time: now,
      allocations: failing ? [{ id: `sim-job.main.0-${i}`, job: 'sim-job', job_version: 1, group: 'main', state: 'failed',
        tasks: [{ name: 'probe', state: 'failed', restarts: 3, exit_code: 1, message: 'exited with code 1' }] }] : [],
    },
  };
}

test(`dashboard renders ${SIM} devices`, { timeout: 240_000 }, async (t) => {
  const defer = cleaner(t);
  const [mqttPort, wsPort, httpPort] = [await freePort(), await freePort(), await freePort()];
  // The broker and the planner write every retained message to bbolt with
  // an fsync (about 150 a second on an ordinary disk): keep their files in
  // memory where there is a tmpfs, so that this measures the page.
  const dataDir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'tether-dash-load-'));
  defer(() => rmSync(dataDir, { recursive: true, force: true }));
  const dev = await startDev({ dataDir, mqtt: mqttPort, ws: wsPort, http: httpPort, extra: ['--no-edged'], log: quiet });
  defer(() => dev.stop());
  await servesDashboard(httpPort);

  const { context, page, errors, close } = await launchBrowser({ log });
  defer(close);
  await page.goto(`http://127.0.0.1:${httpPort}/#devices`);
  await page.waitForSelector(sel('connection', { state: 'connected' }), { timeout: WAIT });

  // One connection, QoS 1, at most WINDOW publishes awaiting their PUBACK.
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, { protocolVersion: 4, clean: true, clientId: 'dash-load-' + process.pid, reconnectPeriod: 0 });
  defer(() => client.endAsync());
  const WINDOW = 256;
  const now = new Date().toISOString();
  const start = Date.now();
  const pending = new Set();
  for (let i = 0; i < SIM; i++) {
    const d = simDevice(i, now);
    for (const kind of ['presence', 'facts', 'reported']) {
      const p = client.publishAsync(`tether/v1/devices/${d.id}/${kind}`, JSON.stringify(d[kind]), { qos: 1, retain: true });
      pending.add(p);
      p.finally(() => pending.delete(p));
      if (pending.size >= WINDOW) await Promise.race(pending);
    }
  }
  await Promise.all(pending);
  const published = Date.now() - start;

  // Live: the page was open while the messages came.
  const shown = sel('device-shown', { shown: String(SIM), total: String(SIM) });
  // Devices the page knows all three retained messages of.
  const complete = () => page.evaluate(() => {
    let n = 0;
    for (const d of window.tetherDashboard.fleet.devices.values()) if (d.presence && d.facts && d.reported) n++;
    return n;
  });
  await page.waitForSelector(shown, { timeout: 120_000 });
  const live = Date.now() - start;
  const liveComplete = await complete();
  await shot(page, '08-10k-devices');

  // The planner's fleet summary catches up in its own time.
  await page.click(sel('tab-overview'));
  let summary = 'not at 10000 within 120 s';
  try {
    await page.waitForSelector(sel('overview-source', { source: 'summary' }), { timeout: 120_000 });
    await page.waitForFunction((n) => document.querySelector('[data-testid="count-total"]').textContent === String(n), SIM, { timeout: 120_000 });
    summary = `${((Date.now() - start) / 1000).toFixed(1)} s after the first publish`;
  } catch {
    // reported below: the page does not depend on it
  }
  await shot(page, '09-10k-overview');

  // Cold: a new page load gets 30,000 retained messages at once.
  await page.click(sel('tab-devices'));
  const reload = Date.now();
  await page.reload();
  await page.waitForSelector(shown, { timeout: 120_000 });
  const cold = Date.now() - reload;
  await page.waitForSelector(sel('connection', { state: 'connected', loaded: 'true' }), { timeout: 120_000 });
  const coldLoaded = Date.now() - reload;
  const coldComplete = await complete();
  const stats = await page.evaluate(() => window.tetherDashboard.link.stats);

  // Interaction stays quick with everything loaded.
  const typed = Date.now();
  await page.fill(sel('device-search'), 'sim-0999');
  await page.waitForSelector(sel('device-shown', { shown: '10' }), { timeout: WAIT });
  const filtered = Date.now() - typed;
  await page.fill(sel('device-search'), '');
  await page.waitForSelector(shown, { timeout: WAIT });
  const rows = await page.locator(sel('device-row')).count();

  const cdp = await context.newCDPSession(page);
  await cdp.send('HeapProfiler.collectGarbage');
  await cdp.send('Performance.enable');
  const { metrics } = await cdp.send('Performance.getMetrics');
  const m = Object.fromEntries(metrics.map((x) => [x.name, x.value]));
  const heap = await page.evaluate(() => (performance.memory ? performance.memory.usedJSHeapSize : 0));
  const nodes = await page.evaluate(() => document.getElementsByTagName('*').length);

  const mib = (b) => (b / 1048576).toFixed(1) + ' MiB';
  console.log([
    `${SIM} devices, ${3 * SIM} retained messages:`,
    `  published (QoS 1, window ${WINDOW}) in ${published} ms`,
    `  live: page showed ${SIM} devices ${live} ms after the first publish (${liveComplete} with all three messages)`,
    `  cold: page load to ${SIM} devices shown ${cold} ms, to everything loaded ${coldLoaded} ms (${coldComplete} with all three messages;`,
    `        broker dropped ${stats.barriersLost} barriers, page asked again for ${stats.repairedTopics} topics in ${stats.repairRounds} rounds)`,
    `  search to 10 matches: ${filtered} ms; device rows in the DOM: ${rows}; DOM elements: ${nodes}`,
    `  JS heap after GC: ${mib(m.JSHeapUsedSize)} used of ${mib(m.JSHeapTotalSize)} (CDP), performance.memory ${mib(heap)}`,
    `  planner's fleet summary at ${SIM}: ${summary}`,
  ].join('\n'));

  assert.ok(rows < 100, `only the visible rows are in the DOM, got ${rows}`);
  assert.deepEqual(errors, [], 'uncaught errors in the page');
});
