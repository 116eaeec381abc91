// Unit tests of the sign-in rules (static/js/auth.js) and of where the page
// connects (brokerURL and the hint of wss://). No browser, no broker.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  parseToken, TokenError, credentials, clientIdFor, usernameOf, refusalOf, TokenStore, STORAGE_KEY,
} from '../static/js/auth.js';
import { brokerURL, tlsHint } from '../static/js/conn.js';
import { Fleet } from '../static/js/model.js';

const ID = '0a1b2c3d4e5f';
const SECRET = 'q5T_-x9Zk2Lm0Pw7Yb3Nc8Rd1Sf6Gh4Jv2Ak9Eu0XoW'; // 43 characters: 32 bytes

test('a token is <12 lowercase hex>.<base64url secret>', () => {
  assert.deepEqual(parseToken(`${ID}.${SECRET}`), { id: ID, secret: SECRET });
  // Copying from a terminal brings whitespace around it.
  assert.deepEqual(parseToken(`  ${ID}.${SECRET}\n`), { id: ID, secret: SECRET });
  for (const secret of ['AA', 'AAA', 'AAAA', 'a-_b']) assert.equal(parseToken(`${ID}.${secret}`).secret, secret);
});

test('a malformed token is refused with a precise message that never quotes the secret', () => {
  const cases = [
    ['', /Paste a token/],
    ['   ', /Paste a token/],
    [`${ID}${SECRET}`, /no ‘\.’/],
    [`${ID}.${SECRET}.x`, /exactly one ‘\.’.*this one has 2/],
    [`${ID} .${SECRET}`, /no spaces.*character 13/],
    [`${ID}.${SECRET.slice(0, 10)} ${SECRET.slice(10)}`, /no spaces/],
    [`0a1b2c3d4e5.${SECRET}`, /id \(before the ‘\.’\) is 12 hex characters; this one has 11/],
    [`0a1b2c3d4e5f0.${SECRET}`, /this one has 13/],
    [`0A1b2c3d4e5f.${SECRET}`, /lowercase hex; character 2 is the uppercase ‘A’/],
    [`0a1b2c3d4g5f.${SECRET}`, /hex \(0-9, a-f\); character 10 is ‘g’/],
    [`${ID}.`, /secret \(after the ‘\.’\) is missing/],
    [`${ID}.${SECRET}=`, /base64url.*no ‘=’ padding; character 57 of the token is ‘=’/],
    [`${ID}.ab+c`, /‘\+’ is standard base64, not base64url/],
    [`${ID}.ab/c`, /‘\/’ is standard base64/],
    [`${ID}.abcde`, /incomplete: 5 characters/],
  ];
  for (const [text, want] of cases) {
    assert.throws(() => parseToken(text), (err) => {
      assert.ok(err instanceof TokenError, `${JSON.stringify(text)}: ${err}`);
      assert.match(err.message, want, JSON.stringify(text));
      assert.ok(!err.message.includes(SECRET.slice(0, 8)), `the message quotes the secret: ${err.message}`);
      return true;
    });
  }
});

test('a token connects as token/<id> with a client id under that username', () => {
  const c = credentials(parseToken(`${ID}.${SECRET}`));
  assert.deepEqual(c, { id: ID, username: 'token/' + ID, password: SECRET });
  assert.equal(usernameOf(ID), 'token/0a1b2c3d4e5f');
  const cid = clientIdFor(c.username, 'a1b2c3d4e5f6');
  assert.equal(cid, 'token/0a1b2c3d4e5f/dash-a1b2c3d4e5f6');
  assert.ok(cid.startsWith(c.username + '/'), 'the broker refuses a client id that does not start with "<username>/"');
  // Anonymous (tether dev): no username, so no prefix to respect.
  assert.equal(clientIdFor('', 'a1b2c3d4e5f6'), 'tether-dash-a1b2c3d4e5f6');
});

test('only CONNACK refusals of who the client is ask for a token', () => {
  const err = (code, message = 'Connection refused') => Object.assign(new Error(message), { code });
  assert.equal(refusalOf(err(4)), 'bad username or password'); // MQTT 3.1.1
  assert.equal(refusalOf(err(5)), 'not authorized');
  assert.equal(refusalOf(err(134)), 'bad username or password'); // MQTT 5
  assert.equal(refusalOf(err(135)), 'not authorized');
  for (const other of [err(1), err(2), err(3), err(128), err('ECONNREFUSED'), new Error('WebSocket error'), null, undefined]) {
    assert.equal(refusalOf(other), '', String(other?.code));
  }
});

/** MemoryStorage is the part of the Web Storage API the store uses; broken throws like disabled storage. */
class MemoryStorage {
  constructor(broken = false) {
    this.m = new Map();
    this.broken = broken;
  }
  getItem(k) {
    if (this.broken) throw new Error('SecurityError');
    return this.m.has(k) ? this.m.get(k) : null;
  }
  setItem(k, v) {
    if (this.broken) throw new Error('QuotaExceededError');
    this.m.set(k, String(v));
  }
  removeItem(k) {
    if (this.broken) throw new Error('SecurityError');
    this.m.delete(k);
  }
}

test('a token is kept for the tab, and on the browser only when remembered', () => {
  const tok = `${ID}.${SECRET}`;
  const session = new MemoryStorage();
  const local = new MemoryStorage();
  const store = new TokenStore(session, local);
  assert.equal(store.load(), null);

  store.save(tok, false);
  assert.equal(session.getItem(STORAGE_KEY), tok);
  assert.equal(local.getItem(STORAGE_KEY), null);
  assert.deepEqual(store.load(), { token: tok, id: ID, secret: SECRET, remembered: false });

  store.save(tok, true);
  assert.equal(local.getItem(STORAGE_KEY), tok);
  assert.equal(store.load().remembered, true);
  // A new tab has no session storage yet: the remembered token.
  assert.deepEqual(new TokenStore(new MemoryStorage(), local).load(), { token: tok, id: ID, secret: SECRET, remembered: true });

  // Signing in again without "remember" forgets the remembered one.
  store.save(tok, false);
  assert.equal(local.getItem(STORAGE_KEY), null);

  store.save(tok, true);
  store.clear();
  assert.equal(session.getItem(STORAGE_KEY), null);
  assert.equal(local.getItem(STORAGE_KEY), null);
  assert.equal(store.load(), null);
});

test('a kept value of the wrong shape is dropped, and storage that throws is empty', () => {
  const session = new MemoryStorage();
  session.setItem(STORAGE_KEY, 'not a token');
  const store = new TokenStore(session, new MemoryStorage());
  assert.equal(store.load(), null);
  assert.equal(session.getItem(STORAGE_KEY), null);

  const broken = new TokenStore(new MemoryStorage(true), null);
  assert.equal(broken.load(), null);
  broken.save(`${ID}.${SECRET}`, true); // does not throw
  broken.clear();
});

test('the page subscribes to exactly the status filters a viewer may read', () => {
  const f = new Fleet('acme/prod');
  const b = 'acme/prod/v1/';
  assert.deepEqual(new Set(f.filters()), new Set([
    b + 'jobs/+/status', b + 'jobs/+/history', b + 'fleet/summary', b + 'devices/+/presence', b + 'devices/+/facts',
    b + 'devices/+/reported', b + 'devices/+/events', b + 'devices/+/scheduling',
  ]));
  assert.equal(f.filters().length, 8);
  assert.ok(f.filters().every((x) => !x.includes('#')), 'no multi-level wildcard');
});

test('the broker URL follows ws_tls and the page scheme', () => {
  const loc = (protocol, hostname) => ({ protocol, hostname });
  assert.equal(brokerURL(loc('http:', '127.0.0.1'), 1884), 'ws://127.0.0.1:1884');
  assert.equal(brokerURL(loc('http:', '127.0.0.1'), 1884, false), 'ws://127.0.0.1:1884');
  // A TLS listener from a page served over plain http (tether on loopback).
  assert.equal(brokerURL(loc('http:', '127.0.0.1'), 8884, true), 'wss://127.0.0.1:8884');
  assert.equal(brokerURL(loc('https:', 'tether.example'), 8884, true), 'wss://tether.example:8884');
  // Browsers refuse ws:// from an https page.
  assert.equal(brokerURL(loc('https:', 'tether.example'), 1884, false), 'wss://tether.example:1884');
  assert.equal(brokerURL(loc('http:', '[::1]'), 1884, true), 'wss://[::1]:1884');
});

test('a wss:// link that cannot connect says the browser must trust the certificate authority', () => {
  const hint = tlsHint('wss://tether.example:8884');
  assert.match(hint, /must trust the certificate authority/);
  assert.match(hint, /DATA-DIR\/tls\/ca\.pem/);
  assert.match(hint, /https:\/\/tether\.example:8884\//);
});
