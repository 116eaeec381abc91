// check-vendor proves that the vendored browser bundle of MQTT.js is the
// one the lock file names: it fails when static/vendor/mqtt.min.js differs
// from node_modules/mqtt/dist/mqtt.min.js (run `npm ci` first).
// With --write it copies the bundle instead, after an upgrade of mqtt.
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { dirname, join, relative } from 'node:path';

const here = dirname(dirname(fileURLToPath(import.meta.url)));
const pairs = [[join(here, 'node_modules/mqtt/dist/mqtt.min.js'), join(here, 'static/vendor/mqtt.min.js')]];
const sha = (b) => createHash('sha256').update(b).digest('hex');
const write = process.argv.includes('--write');

let bad = 0;
for (const [src, dst] of pairs) {
  const rs = relative(here, src);
  const rd = relative(here, dst);
  if (!existsSync(src)) {
    console.error(`check-vendor: ${rs} is missing: run npm ci first`);
    process.exit(2);
  }
  const want = readFileSync(src);
  const version = JSON.parse(readFileSync(join(here, 'node_modules/mqtt/package.json'), 'utf8')).version;
  if (write) {
    writeFileSync(dst, want);
    console.log(`check-vendor: wrote ${rd} from mqtt ${version} (sha256 ${sha(want)})`);
    continue;
  }
  const got = existsSync(dst) ? readFileSync(dst) : null;
  if (!got || !got.equals(want)) {
    console.error(`check-vendor: ${rd} (sha256 ${got ? sha(got) : 'missing'}) differs from ${rs} of mqtt ${version} (sha256 ${sha(want)}); run npm run vendor`);
    bad++;
  } else {
    console.log(`check-vendor: ${rd} matches mqtt ${version} (sha256 ${sha(want)})`);
  }
}
process.exit(bad ? 1 : 0);
