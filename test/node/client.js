#!/usr/bin/env node
// Palisade's Node.js end-to-end client: a proxyless gRPC client on
// @grpc/grpc-js-xds, an xDS implementation independent of grpc-go.
//
//   node client.js TARGET COUNT [NAME=VALUE]
//
// It makes COUNT UnaryCalls of grpc.testing.TestService on TARGET (for example
// xds:///reviews.default.svc.cluster.local:9080), one after the other, optionally with
// one request header, and prints one line of JSON with who answered:
//   {"v1": 800, "v2": 200, "errors": 0}
// plus "lastError" when a call failed. Versions are the server_id the backends
// (test/backend) answer with. The xDS bootstrap is read from GRPC_XDS_BOOTSTRAP (or
// GRPC_XDS_BOOTSTRAP_CONFIG), as in production.
//
// Before counting, it waits up to WAIT_READY_MS (default 20000) for a first
// successful call, so that the tally measures routing, not xDS start-up.
//
// With REPEAT=1 it keeps going: batches of COUNT calls, one tally line per batch,
// 100 ms apart, until it is killed. test/e2e uses this to watch one long-lived client follow a
// routing change.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const grpcXds = require('@grpc/grpc-js-xds');
const protoLoader = require('@grpc/proto-loader');

function usage(msg) {
  process.stderr.write(`client.js: ${msg}\nusage: node client.js TARGET COUNT [NAME=VALUE]\n`);
  process.exit(2);
}

async function main() {
  const [target, countArg, header] = process.argv.slice(2);
  if (!target || !countArg) usage('TARGET and COUNT are required');
  const count = Number.parseInt(countArg, 10);
  if (!Number.isInteger(count) || count < 0) usage(`COUNT ${countArg} is not a number`);
  const metadata = new grpc.Metadata();
  if (header) {
    const eq = header.indexOf('=');
    if (eq <= 0) usage(`header ${header} is not NAME=VALUE`);
    metadata.set(header.slice(0, eq).toLowerCase(), header.slice(eq + 1));
  }
  if (!process.env.GRPC_XDS_BOOTSTRAP && !process.env.GRPC_XDS_BOOTSTRAP_CONFIG) {
    usage('GRPC_XDS_BOOTSTRAP (a bootstrap file) must be set');
  }

  grpcXds.register();
  const def = protoLoader.loadSync(path.join(__dirname, 'proto', 'test.proto'), {
    keepCase: true, defaults: true,
  });
  const { TestService } = grpc.loadPackageDefinition(def).grpc.testing;
  // Security from xDS, plaintext as the fallback, as the Go clients do.
  const creds = new grpcXds.XdsChannelCredentials(grpc.credentials.createInsecure());
  const client = new TestService(target, creds);

  const call = (timeoutMs) => new Promise((resolve) => {
    const deadline = new Date(Date.now() + timeoutMs);
    client.UnaryCall({ fill_server_id: true }, metadata, { deadline }, (err, resp) => {
      resolve(err ? { err } : { version: resp.server_id });
    });
  });

  // Wait for the first successful call.
  const waitMs = Number.parseInt(process.env.WAIT_READY_MS || '20000', 10);
  const readyBy = Date.now() + waitMs;
  let first;
  for (;;) {
    first = await call(2000);
    if (!first.err || Date.now() > readyBy) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (first.err) {
    const tally = { errors: count, lastError: `no successful call within ${waitMs}ms: ${first.err.message}` };
    process.stdout.write(JSON.stringify(tally) + '\n');
    process.exit(0);
  }
  const repeat = process.env.REPEAT === '1';
  do {
    const tally = { errors: 0 };
    for (let i = 0; i < count; i++) {
      const r = await call(5000);
      if (r.err) {
        tally.errors++;
        tally.lastError = r.err.message;
      } else {
        tally[r.version] = (tally[r.version] || 0) + 1;
      }
    }
    process.stdout.write(JSON.stringify(tally) + '\n');
    if (repeat) await new Promise((r) => setTimeout(r, 100));
  } while (repeat);
  client.close();
  // xDS watchers keep the event loop alive; exit explicitly.
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`client.js: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
