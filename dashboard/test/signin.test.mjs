// Browser tests of signing in. First the real `tether server` as it starts
// by default (TLS from its own CA, tokens only): it refuses an anonymous
// page; a viewer token made with the CLI signs in over wss:// and sees a
// device, but not its desired state; a browser that does not trust the CA
// is told so. Then a broker with viewer and operator tokens
// (testkit/viewerbroker: mochi with the access rules tether server applies
// to dashboards) — a viewer signs in, sees the status topics, is told what
// it may not read, stays signed in for the tab or the browser, and signs
// out; an operator reads desired state too. Last, a TLS WebSocket listener
// reached from a page served over http on 127.0.0.1.
//
// Run by e2e/dashboard_test.go with the other browser tests, or by hand:
//
//	TETHER_BIN=/tmp/tether node --test dashboard/test/signin.test.mjs
//
// The viewer broker is built with go (env GO_BIN, else go on the PATH).

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import {
  artifactsDir, buildViewerBroker, freePort, launchBrowser, run, startServer, startViewerBroker, tetherBin, until,
} from '../testkit/harness.mjs';

const ARTIFACTS = artifactsDir();
const WAIT = 30_000;
const KEY = 'tether.dashboard.token'; // auth.js STORAGE_KEY

const log = (line) => console.log(line);
const quiet = () => {};

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

function sel(testid, data = {}) {
  return `[data-testid="${testid}"]` + Object.entries(data).map(([k, v]) => `[data-${k}="${v}"]`).join('');
}

async function shot(page, name) {
  const path = join(ARTIFACTS, name + '.png');
  await page.screenshot({ path });
  console.log(`screenshot ${path}`);
}

/** newToken makes a token as an operator is shown one: 12 hex, '.', 32 random bytes in base64url. */
function newToken() {
  const id = randomBytes(6).toString('hex');
  const secret = randomBytes(32).toString('base64url');
  return { id, secret, text: `${id}.${secret}` };
}

const golden = (name) => readFileSync(new URL(`../../protocol/testdata/golden/${name}.json`, import.meta.url));

/** signIn types a token into the form and submits it. */
async function signIn(page, text, { remember = false } = {}) {
  await page.fill(sel('login-token'), text);
  await page.setChecked(sel('login-remember'), remember);
  await page.click(sel('login-submit'));
}

async function stored(page) {
  return page.evaluate((k) => ({ session: sessionStorage.getItem(k), local: localStorage.getItem(k) }), KEY);
}

// tether server as it starts by default: TLS from a CA it makes in
// DATA-DIR/tls, no anonymous clients. The browser trusts exactly this
// server's key (as one that imported DATA-DIR/tls/ca.pem trusts what that
// CA signed); a second browser trusts nothing of it.
describe('tether server in its default configuration (TLS from its own CA, tokens only)', () => {
  let srv = null;
  let dataDir = '';
  let browser = null; // trusts this server's certificate
  const ports = {};
  let url = '';
  let cli = []; // global flags of the tether CLI as the bootstrap operator

  before(async () => {
    [ports.mqtt, ports.ws, ports.http] = [await freePort(), await freePort(), await freePort()];
    dataDir = mkdtempSync(join(tmpdir(), 'tether-dash-signin-'));
    srv = await startServer({ dataDir, ...ports, log: quiet });
    url = `http://127.0.0.1:${ports.http}/`;
    cli = ['--broker', `mqtts://127.0.0.1:${ports.mqtt}`, '--ca-file', srv.tls.ca, '--token-file', srv.operatorToken];
    browser = await launchBrowser({ log, trustCerts: [srv.tls.cert] });
  });
  after(async () => {
    await browser?.close();
    await srv?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  test('refuses an anonymous dashboard: the page asks for a token and says what is wrong with one', { timeout: 90_000 }, async (t) => {
    const defer = cleaner(t);
    const { errors, consoleLines } = browser;
    const page = await browser.context.newPage();
    defer(() => page.close());
    await page.goto(url);
    await page.waitForSelector(`${sel('login')}:not([hidden])`, { timeout: WAIT });
    assert.equal(await page.getAttribute(sel('connection'), 'data-state'), 'refused');
    assert.equal(await page.evaluate(() => window.tetherDashboard.link.url), `wss://127.0.0.1:${ports.ws}`);
    // (MQTT 3.1.1 has two codes for it; mochi sends 5, not authorized.)
    const refusal = '\\((not authorized|bad username or password)\\)';
    assert.match(await page.textContent(sel('login-reason')), new RegExp(`lets dashboards in with a token only: it refused this page without one ${refusal}`));
    assert.ok(await page.locator('#main').isHidden(), 'the views make way for the form');
    assert.ok(await page.locator(sel('connection-banner')).isHidden(), 'the form says it all: no banner');

    // The shape is checked before anything is sent.
    await signIn(page, 'hello');
    await page.waitForSelector(`${sel('login-error')}:not([hidden])`, { timeout: WAIT });
    assert.match(await page.textContent(sel('login-error')), /no ‘\.’/);

    // A well-formed token the server does not know: refused, and the form stays.
    const tok = newToken();
    await signIn(page, tok.text);
    await until('the refusal of an unknown token', async () => /refused token/.test(await page.textContent(sel('login-error'))), WAIT);
    const msg = await page.textContent(sel('login-error'));
    assert.match(msg, new RegExp(`The broker refused token ${tok.id} ${refusal}`));
    assert.ok(!msg.includes(tok.secret));
    assert.ok(await page.locator(sel('login')).isVisible());
    assert.equal(await page.inputValue(sel('login-token')), tok.text, 'what was typed stays, to be corrected');
    assert.deepEqual(await stored(page), { session: null, local: null }, 'a refused token is not kept');
    await shot(page, '20-server-refused-token');

    assert.ok(!consoleLines.some((l) => l.includes(tok.secret)), 'the secret is never logged');
    assert.deepEqual(errors, [], 'uncaught errors in the page');
  });

  test('a viewer token made with the CLI signs in over wss:// and sees the fleet, but not desired state', { timeout: 90_000 }, async (t) => {
    const defer = cleaner(t);
    let r = await run(tetherBin(), [...cli, 'acl', 'token', 'create', '--role', 'viewer', '--name', 'dash'], { log: quiet });
    assert.equal(r.code, 0, `tether acl token create: ${r.stderr}`);
    const viewer = r.stdout.trim();
    assert.match(viewer, /^[0-9a-f]{12}\.[A-Za-z0-9_-]+$/, 'the token alone on stdout');
    const viewerId = viewer.slice(0, 12);

    // A device with a secret, over mqtts:// with the server's CA, as edged
    // connects: its presence and facts, retained.
    r = await run(tetherBin(), [...cli, 'device', 'add', 'pi-07', '--label', 'site=berlin'], { log: quiet });
    assert.equal(r.code, 0, `tether device add: ${r.stderr}`);
    const device = await mqtt.connectAsync(`mqtts://127.0.0.1:${ports.mqtt}`, {
      ca: readFileSync(srv.tls.ca), protocolVersion: 4, clean: true, reconnectPeriod: 0,
      clientId: 'pi-07', username: 'pi-07', password: r.stdout.trim(),
    });
    defer(() => device.endAsync());
    for (const name of ['presence', 'facts']) {
      await device.publishAsync(`tether/v1/devices/pi-07/${name}`, golden(name), { qos: 1, retain: true });
    }

    const { errors, consoleLines } = browser;
    const page = await browser.context.newPage();
    defer(() => page.close());
    await page.goto(url);
    await page.waitForSelector(`${sel('login')}:not([hidden])`, { timeout: WAIT });
    await signIn(page, viewer);
    await page.waitForSelector(sel('connection', { state: 'connected', loaded: 'true' }), { timeout: WAIT });
    assert.ok(await page.locator(sel('login')).isHidden());
    assert.equal(await page.textContent(sel('signed-in-id')), viewerId);
    assert.deepEqual(await stored(page), { session: viewer, local: null });
    assert.match(await page.getAttribute(sel('connection'), 'title'), new RegExp(`broker wss://127\\.0\\.0\\.1:${ports.ws}`));
    // The server granted every filter the page asked for: nothing says "not permitted".
    assert.equal(await page.locator(sel('denied')).count(), 0);

    // The fleet: the device counted online on the overview, with its label...
    await page.waitForFunction(() => document.querySelector('[data-testid="count-online"]').textContent === '1', null, { timeout: WAIT });
    await page.waitForSelector(`${sel('by-label')} >> text=berlin`, { timeout: WAIT });
    // ...and in the device list, with its facts.
    await page.click(sel('tab-devices'));
    const row = sel('device-row', { device: 'pi-07', status: 'online' });
    await page.waitForSelector(row, { timeout: WAIT });
    await page.click(`${row} a`);
    await page.waitForSelector(`${sel('device-detail', { device: 'pi-07' })} ${sel('device-facts')}`, { timeout: WAIT });
    assert.match(await page.textContent(sel('device-facts')), /arm64/);
    // The server refuses a viewer the device's desired state, and the page says so.
    await page.waitForSelector(sel('denied', { what: 'desired' }), { timeout: WAIT });
    assert.match(await page.textContent(sel('denied', { what: 'desired' })), /not permitted for this token/);
    assert.match(await page.textContent(sel('device-generation')), /desired state not permitted for this token/);
    assert.equal(await page.locator(sel('device-desired')).count(), 0);
    await shot(page, '24-server-viewer-device');

    const secret = viewer.slice(13);
    assert.ok(!consoleLines.some((l) => l.includes(secret)), 'the page never logs a secret');
    assert.deepEqual(errors, [], 'uncaught errors in the page');
  });

  test('a browser that does not trust the server\'s CA: the page says it cannot connect, and that the browser must trust it', { timeout: 90_000 }, async (t) => {
    const defer = cleaner(t);
    const { page, errors, consoleLines, close } = await launchBrowser({ log: quiet });
    defer(close);
    await page.goto(url);
    await page.waitForSelector(`${sel('connection-banner')}:not([hidden])`, { timeout: WAIT });
    assert.ok(consoleLines.some((l) => l.includes('ERR_CERT_AUTHORITY_INVALID')), 'Chromium refused the certificate: not some other failure');
    assert.equal(await page.getAttribute(sel('connection'), 'data-state'), 'connecting');
    const banner = await page.textContent(sel('connection-banner'));
    assert.match(banner, new RegExp(`Cannot reach the broker at wss://127\\.0\\.0\\.1:${ports.ws}`));
    assert.match(banner, /this browser must trust the certificate authority of the broker's certificate/);
    assert.match(banner, /DATA-DIR\/tls\/ca\.pem/);
    assert.ok(await page.locator(sel('login')).isHidden(), 'no sign-in form: the broker has not answered');
    await shot(page, '25-server-untrusted-ca');
    assert.deepEqual(errors, [], 'uncaught errors in the page');
  });
});

let broker = null; // the viewer broker binary, or null without go
let buildDir = '';

before(async () => {
  buildDir = mkdtempSync(join(tmpdir(), 'tether-viewerbroker-'));
  broker = await buildViewerBroker(buildDir, { log: quiet });
});
after(() => rmSync(buildDir, { recursive: true, force: true }));

/** needBroker skips a test without go (and fails it in CI, where go must be there). */
function needBroker(t) {
  if (broker) return true;
  const msg = 'no go command (GO_BIN or go on the PATH) to build testkit/viewerbroker';
  if (process.env.CI) throw new Error(msg);
  t.skip(msg);
  return false;
}

/** subscriptions are the filters the viewer broker saw client subscribe to, with its answers. */
function subscriptions(proc, client) {
  const out = [];
  for (const l of proc.lines) {
    const m = /^subscribe client=(\S+) filter=(\S+) granted=(true|false)$/.exec(l);
    if (m && m[1] === client) out.push({ filter: m[2], granted: m[3] === 'true' });
  }
  return out;
}

/** seed publishes, as an operator, the retained state of device pi-07 and job hello from the protocol's golden files. */
async function seed(wsPort, operator) {
  const c = await mqtt.connectAsync(`ws://127.0.0.1:${wsPort}`, {
    protocolVersion: 4, clean: true, reconnectPeriod: 0,
    username: 'token/' + operator.id, password: operator.secret, clientId: `token/${operator.id}/seed`,
  });
  const b = 'tether/v1/';
  for (const [topic, name] of [
    ['devices/pi-07/presence', 'presence'], ['devices/pi-07/facts', 'facts'], ['devices/pi-07/reported', 'reported'],
    ['devices/pi-07/desired', 'desired'], ['devices/pi-07/scheduling', 'scheduling'],
    ['jobs/hello/status', 'jobstatus'], ['jobs/hello/history', 'history'], ['fleet/summary', 'fleetsummary'],
  ]) {
    await c.publishAsync(b + topic, golden(name), { qos: 1, retain: true });
  }
  return c;
}

test('a viewer token signs in, reads the status topics only, and signs out', { timeout: 120_000 }, async (t) => {
  if (!needBroker(t)) return;
  const defer = cleaner(t);
  const viewer = newToken();
  const operator = newToken();
  const [wsPort, httpPort] = [await freePort(), await freePort()];
  const vb = await startViewerBroker(broker, { ws: wsPort, http: httpPort, viewers: [viewer.text], operators: [operator.text], log: quiet });
  defer(() => vb.stop());
  const seeder = await seed(wsPort, operator);
  defer(() => seeder.endAsync());

  const { context, page, errors, consoleLines, close } = await launchBrowser({ log });
  defer(close);
  const url = `http://127.0.0.1:${httpPort}/`;
  await page.goto(url);
  await page.waitForSelector(`${sel('login')}:not([hidden])`, { timeout: WAIT });
  await vb.waitLine('connect refused client=tether-dash-');

  // Precise messages for the usual slips, before anything is sent.
  await signIn(page, viewer.id.toUpperCase().replace(/^./, 'A') + '.' + viewer.secret);
  await until('the uppercase id to be pointed out', async () => /lowercase hex/.test(await page.textContent(sel('login-error'))), WAIT);
  await signIn(page, `${viewer.id}.${viewer.secret}=`);
  await until('the padding to be pointed out', async () => /no ‘=’ padding/.test(await page.textContent(sel('login-error'))), WAIT);

  // The right id with the wrong secret.
  const wrong = `${viewer.id}.${randomBytes(32).toString('base64url')}`;
  await signIn(page, wrong);
  await until('the wrong secret to be refused', async () => /refused token/.test(await page.textContent(sel('login-error'))), WAIT);
  assert.ok(await page.locator(sel('login')).isVisible(), 'the form stays');
  assert.deepEqual(await stored(page), { session: null, local: null });
  await vb.waitLine(`connect refused client=token/${viewer.id}/dash-`);

  // The right token: connected, loaded, and kept for this tab only.
  await signIn(page, viewer.text);
  await page.waitForSelector(sel('connection', { state: 'connected', loaded: 'true' }), { timeout: WAIT });
  assert.ok(await page.locator(sel('login')).isHidden());
  assert.equal(await page.textContent(sel('signed-in-id')), viewer.id);
  assert.ok(await page.locator(sel('sign-out')).isVisible());
  assert.deepEqual(await stored(page), { session: viewer.text, local: null });
  assert.equal(await page.inputValue(sel('login-token')), '', 'the token leaves the form once accepted');

  // The broker admitted it under a client id below its username, and it
  // subscribed to exactly the viewer's status filters, all granted.
  const admitted = await vb.waitLine(`connect ok client=token/${viewer.id}/dash-`);
  const client = /client=(\S+)/.exec(admitted)[1];
  assert.match(client, new RegExp(`^token/${viewer.id}/dash-[0-9a-f]+$`));
  const subs = subscriptions(vb, client);
  const b = 'tether/v1/';
  // (The fleet summary counts 3 devices and the broker has 1: the page asks
  // for presence again, which is the same filter.)
  assert.deepEqual(new Set(subs.map((s) => s.filter)), new Set([
    `${b}fleet/summary`, `${b}jobs/+/status`, `${b}jobs/+/history`, `${b}devices/+/presence`, `${b}devices/+/facts`,
    `${b}devices/+/reported`, `${b}devices/+/events`, `${b}devices/+/scheduling`, `${b}sync/${client}/+`,
  ]));
  assert.deepEqual(subs.filter((s) => !s.granted), [], 'nothing refused before a device is opened');

  // What a viewer sees: the device with its scheduling, the job with its history...
  await page.click(sel('tab-devices'));
  const row = sel('device-row', { device: 'pi-07', status: 'online', scheduling: 'draining' });
  await page.waitForSelector(row, { timeout: WAIT });
  await page.click(`${row} a`);
  await page.waitForSelector(`${sel('device-detail', { device: 'pi-07' })} ${sel('device-facts')}`, { timeout: WAIT });
  assert.equal(await page.getAttribute(sel('device-scheduling'), 'data-scheduling'), 'draining');
  // ...and not the desired state: said so, not waited for.
  await page.waitForSelector(sel('denied', { what: 'desired' }), { timeout: WAIT });
  assert.match(await page.textContent(sel('denied', { what: 'desired' })), /not permitted for this token/);
  assert.match(await page.textContent(sel('device-generation')), /desired state not permitted for this token/);
  assert.equal(await page.locator(sel('device-desired')).count(), 0);
  await until('the broker to refuse the desired topic', () =>
    subscriptions(vb, client).some((s) => s.filter === `${b}devices/pi-07/desired` && !s.granted), WAIT);
  await shot(page, '21-viewer-device');

  await page.click(sel('tab-jobs'));
  await page.waitForSelector(`${sel('job-card', { job: 'hello' })} ${sel('job-history')} ${sel('job-version', { version: '2', stable: 'true' })}`,
    { state: 'attached', timeout: WAIT });
  await shot(page, '22-viewer-jobs');

  // The tab keeps the token across a reload. With the device open, the
  // refused desired topic is among the first subscriptions: the page still
  // loads, and says "not permitted" at once.
  const admittedBefore = vb.lines.filter((l) => l.startsWith(`connect ok client=token/${viewer.id}/`)).length;
  await page.goto(url + '#devices/pi-07');
  await page.reload();
  await page.waitForSelector(sel('connection', { state: 'connected', loaded: 'true' }), { timeout: WAIT });
  assert.ok(await page.locator(sel('login')).isHidden(), 'no form after a reload');
  assert.equal(await page.textContent(sel('signed-in-id')), viewer.id);
  await page.waitForSelector(`${sel('device-detail', { device: 'pi-07' })} ${sel('denied', { what: 'desired' })}`, { timeout: WAIT });
  await until('a second admission', () => vb.lines.filter((l) => l.startsWith(`connect ok client=token/${viewer.id}/`)).length > admittedBefore, WAIT);

  // Sign out: the token is gone and the form is back.
  await page.click(sel('sign-out'));
  await page.waitForSelector(`${sel('login')}:not([hidden])`, { timeout: WAIT });
  assert.deepEqual(await stored(page), { session: null, local: null });
  assert.ok(await page.locator(sel('signed-in')).isHidden());

  // Remembered: a new tab of this browser is signed in at once.
  await signIn(page, viewer.text, { remember: true });
  await page.waitForSelector(sel('connection', { state: 'connected', loaded: 'true' }), { timeout: WAIT });
  assert.deepEqual(await stored(page), { session: viewer.text, local: viewer.text });
  const other = await context.newPage();
  await other.goto(url);
  await other.waitForSelector(sel('connection', { state: 'connected', loaded: 'true' }), { timeout: WAIT });
  assert.ok(await other.locator(sel('login')).isHidden());
  assert.equal(await other.getAttribute(sel('signed-in'), 'data-remembered'), 'true');
  await other.click(sel('sign-out'));
  await other.waitForSelector(`${sel('login')}:not([hidden])`, { timeout: WAIT });
  assert.deepEqual(await stored(other), { session: null, local: null }, 'signing out forgets a remembered token too');
  await other.close();
  // The first tab keeps its own copy until it signs out too.
  assert.equal((await stored(page)).session, viewer.text);
  await page.click(sel('sign-out'));
  await page.waitForSelector(`${sel('login')}:not([hidden])`, { timeout: WAIT });

  // An operator reads everything, the desired state included.
  await page.goto(url + '#devices/pi-07');
  await signIn(page, operator.text);
  await page.waitForSelector(sel('connection', { state: 'connected', loaded: 'true' }), { timeout: WAIT });
  await page.waitForSelector(`${sel('device-detail', { device: 'pi-07' })} ${sel('device-desired')}`, { timeout: WAIT });
  assert.equal(await page.locator(sel('denied')).count(), 0, 'nothing is refused to an operator');
  await shot(page, '23-operator-device');

  for (const tok of [viewer, operator]) {
    assert.ok(!consoleLines.some((l) => l.includes(tok.secret)), 'the page never logs a secret');
    assert.ok(!vb.lines.some((l) => l.includes(tok.secret)), 'the fixture never prints a secret');
  }
  assert.deepEqual(errors, [], 'uncaught errors in the page');
});

test('over wss:// to a TLS WebSocket listener from a page served over http on 127.0.0.1; a kept token the broker refuses is forgotten', { timeout: 90_000 }, async (t) => {
  if (!needBroker(t)) return;
  const defer = cleaner(t);
  const [wsPort, httpPort] = [await freePort(), await freePort()];
  // Anonymous clients in, like tether dev, and no tokens at all.
  const cert = join(buildDir, `viewerbroker-${wsPort}.pem`);
  const vb = await startViewerBroker(broker, { ws: wsPort, http: httpPort, anonymous: true, tlsCert: cert, log: quiet });
  defer(() => vb.stop());

  // The fixture's certificate is self-signed: this browser accepts its key, and no other.
  const { page, errors, close } = await launchBrowser({ log, trustCerts: [cert] });
  defer(close);
  await page.goto(`http://127.0.0.1:${httpPort}/`);
  await page.waitForSelector(sel('connection', { state: 'connected', loaded: 'true' }), { timeout: WAIT });
  assert.equal(await page.evaluate(() => window.tetherDashboard.link.url), `wss://127.0.0.1:${wsPort}`);
  assert.match(await page.getAttribute(sel('connection'), 'title'), new RegExp(`broker wss://127\\.0\\.0\\.1:${wsPort}`));
  await vb.waitLine('connect ok client=tether-dash-');

  // tether dev after tether server on the same address: the token kept
  // from then is refused, forgotten, and the page carries on anonymously.
  const stale = newToken();
  await page.evaluate(([k, v]) => localStorage.setItem(k, v), [KEY, stale.text]);
  await page.reload();
  await vb.waitLine(`connect refused client=token/${stale.id}/dash-`);
  await page.waitForSelector(sel('connection', { state: 'connected', loaded: 'true' }), { timeout: WAIT });
  assert.deepEqual(await stored(page), { session: null, local: null });
  assert.ok(await page.locator(sel('login')).isHidden());
  assert.ok(await page.locator(sel('signed-in')).isHidden());
  assert.deepEqual(errors, [], 'uncaught errors in the page');
});
