// Helpers for the browser tests: free ports, the real `tether dev` and
// `tether server` processes, the viewer-token broker fixture
// (testkit/viewerbroker), CLI runs, headless Chromium through
// playwright-core (trusting exactly the certificates a test names), and
// polling with a deadline. Nothing here sleeps to wait for a condition.

import { spawn } from 'node:child_process';
import { X509Certificate, createHash } from 'node:crypto';
import { createServer } from 'node:net';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/** DASHBOARD_DIR is the dashboard folder (package.json, testkit/). */
export const DASHBOARD_DIR = dirname(dirname(fileURLToPath(import.meta.url)));

/** tetherBin is the binary under test (env TETHER_BIN). */
export function tetherBin() {
  const bin = process.env.TETHER_BIN;
  if (!bin) throw new Error('set TETHER_BIN to the tether binary under test (the Go harness e2e/dashboard_test.go does)');
  return bin;
}

/** freePort asks the kernel for a free port on 127.0.0.1 and releases it. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** artifactsDir is where screenshots go: env ARTIFACTS_DIR, else a new temporary folder. */
export function artifactsDir() {
  let dir = process.env.ARTIFACTS_DIR;
  if (dir) mkdirSync(dir, { recursive: true });
  else dir = mkdtempSync(join(tmpdir(), 'tether-dashboard-artifacts-'));
  return dir;
}

/**
 * until polls fn until it returns a truthy value and returns that value, or
 * throws after timeout ms saying what it waited for.
 */
export async function until(what, fn, timeout = 30_000, every = 100) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? ': ' + last.message : ''}`);
    }
    await new Promise((r) => setTimeout(r, every));
  }
}

/** Proc is a running binary whose output is kept line by line. */
export class Proc {
  constructor(name, bin, args, { log = () => {} } = {}) {
    this.name = name;
    this.args = args;
    this.lines = [];
    this.log = log;
    this.child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    this.done = false;
    this.exited.then(() => { this.done = true; });
    for (const s of [this.child.stdout, this.child.stderr]) {
      let buf = '';
      s.setEncoding('utf8');
      s.on('data', (chunk) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          this.lines.push(line);
          this.log(`[${this.name}] ${line}`);
        }
      });
    }
  }

  /** waitLine returns the first output line that starts with prefix. */
  waitLine(prefix, timeout = 60_000) {
    return until(`${this.name} to print "${prefix}"`, () => {
      const l = this.lines.find((x) => x.startsWith(prefix));
      if (l) return l;
      if (this.done) throw new Error(`${this.name} exited:\n${this.lines.slice(-30).join('\n')}`);
      return null;
    }, timeout, 50);
  }

  /** kill ends the process at once, like a power cut, and waits for it. */
  async kill() {
    if (!this.done) this.child.kill('SIGKILL');
    await this.exited;
  }

  /** stop asks the process to shut down (SIGINT), killing it after grace ms. */
  async stop(grace = 15_000) {
    if (this.done) return;
    this.child.kill('SIGINT');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), grace);
    await this.exited;
    clearTimeout(timer);
  }
}

/** startDev starts `tether dev` and waits until it serves HTTP. */
export async function startDev({ dataDir, mqtt, ws, http, extra = [], log }) {
  const args = ['dev', '--data-dir', dataDir, '--mqtt-addr', `127.0.0.1:${mqtt}`, '--ws-addr', `127.0.0.1:${ws}`,
    '--http-addr', `127.0.0.1:${http}`, ...extra];
  const p = new Proc('tether dev', tetherBin(), args, { log });
  await p.waitLine('Health:');
  return p;
}

/**
 * startServer starts `tether server` (no anonymous clients; TLS with a CA
 * it makes in dataDir/tls unless extra says otherwise) and waits until it
 * serves HTTP. The returned Proc also has tls: the paths of the made CA
 * and server certificate (see serverTLS in cmd/tether/serve.go), and
 * operatorToken: the bootstrap operator token's file.
 */
export async function startServer({ dataDir, mqtt, ws, http, extra = [], log }) {
  const args = ['server', '--data-dir', dataDir, '--mqtt-addr', `127.0.0.1:${mqtt}`, '--ws-addr', `127.0.0.1:${ws}`,
    '--http-addr', `127.0.0.1:${http}`, ...extra];
  const p = new Proc('tether server', tetherBin(), args, { log });
  await p.waitLine('Health:');
  p.tls = { ca: join(dataDir, 'tls', 'ca.pem'), cert: join(dataDir, 'tls', 'server.pem') };
  p.operatorToken = join(dataDir, 'operator.token');
  return p;
}

/**
 * spkiHash is the base64 SHA-256 of the SubjectPublicKeyInfo of the first
 * certificate in a PEM file: the pin Chromium's
 * --ignore-certificate-errors-spki-list takes (RFC 7469's pin-sha256).
 */
export function spkiHash(pemFile) {
  const der = new X509Certificate(readFileSync(pemFile)).publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('base64');
}

/**
 * buildViewerBroker builds testkit/viewerbroker (a broker with the viewer
 * token rules; see its doc.go) into dir and returns the binary. It needs
 * the go command: env GO_BIN, else go on the PATH. It returns null when
 * there is no go command, for the caller to skip.
 */
export async function buildViewerBroker(dir, { log = () => {} } = {}) {
  const out = join(dir, 'viewerbroker');
  let r;
  try {
    r = await run(process.env.GO_BIN || 'go', ['build', '-o', out, './testkit/viewerbroker'], { cwd: DASHBOARD_DIR, log });
  } catch (err) {
    if (err.code === 'ENOENT') return null;
    throw err;
  }
  if (r.code !== 0) throw new Error(`go build ./testkit/viewerbroker: exit ${r.code ?? r.signal}\n${r.stdout}${r.stderr}`);
  return out;
}

/**
 * startViewerBroker runs the fixture built by buildViewerBroker and waits
 * until it listens. viewers and operators are tokens "<id>.<secret>";
 * tlsCert, when given, makes its WebSocket listener speak TLS with a new
 * self-signed certificate that it writes there (PEM), for trustCerts.
 */
export async function startViewerBroker(bin, { ws, http, viewers = [], operators = [], anonymous = false, tlsCert = '', log }) {
  const args = ['-ws-addr', `127.0.0.1:${ws}`, '-http-addr', `127.0.0.1:${http}`,
    ...viewers.flatMap((t) => ['-viewer', t]), ...operators.flatMap((t) => ['-operator', t])];
  if (anonymous) args.push('-anonymous');
  // TLS with a new self-signed certificate, written to tlsCert for the browser to trust.
  if (tlsCert) args.push('-tls-cert-out', tlsCert);
  // Proc logs its arguments nowhere; the tokens stay out of the output.
  const p = new Proc('viewerbroker', bin, args, { log });
  await p.waitLine('ready ');
  return p;
}

/** run runs a CLI command to completion (in cwd, default this process's). */
export function run(bin, args, { timeout = 120_000, log = () => {}, cwd } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      log(`$ ${bin} ${args.join(' ')} (exit ${code ?? signal})\n${stdout}${stderr}`);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/**
 * launchBrowser starts Debian's Chromium headless with a fresh profile
 * (playwright-core never downloads a browser) and returns a page; close()
 * ends the browser and removes the profile.
 *
 * trustCerts are PEM files of server certificates whose keys this browser
 * accepts although no authority it knows signed them (a CA that tether
 * server made, a self-signed fixture): Chromium ignores certificate errors
 * for those public keys only (--ignore-certificate-errors-spki-list, which
 * needs the --user-data-dir a persistent context has); every other
 * certificate is checked as usual.
 */
export async function launchBrowser({ log = () => {}, args = [], trustCerts = [] } = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'tether-chromium-'));
  if (trustCerts.length > 0) args = [...args, '--ignore-certificate-errors-spki-list=' + trustCerts.map(spkiHash).join(',')];
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--enable-precise-memory-info', ...args],
  });
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  const consoleLines = []; // everything the pages wrote to the console
  const watched = new WeakSet();
  const watch = (p) => {
    if (watched.has(p)) return;
    watched.add(p);
    p.on('pageerror', (err) => {
      errors.push(err.message);
      log(`[page error] ${err.message}`);
    });
    p.on('console', (m) => {
      consoleLines.push(m.text());
      if (m.type() === 'error' || m.type() === 'warning') log(`[console ${m.type()}] ${m.text()}`);
    });
  };
  watch(page);
  context.on('page', watch);
  const close = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, page, errors, consoleLines, close };
}

/** httpStatus fetches a URL and returns its status (0 when unreachable). */
export async function httpStatus(url) {
  try {
    const res = await fetch(url);
    await res.arrayBuffer();
    return res.status;
  } catch {
    return 0;
  }
}
