// Load generator for PutSnapshotBlock: N concurrent keep-alive clients PUT distinct
// blocks to one snapshot for a fixed time and report PUT/s. Not part of `npm test`.
//   npx tsc -p tsconfig.json && npx tsx test/local-ebs/load.ts [--clients 64] [--seconds 10] [--faults SPEC]
// It starts `node dist/cli.js local-ebs` in a temporary directory (a separate process,
// as users run it) and stops it at the end. To load a server you run yourself (say,
// under --cpu-prof): --endpoint URL --access-key-id ID --secret-access-key KEY --pid PID.
import http from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256 } from '../../src/ebs/checksum';
import { getLocalEbsStats } from '../../src/local-ebs/admin-client';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { startLocalEbsProcess, stopAllLocalEbsProcesses } from '../support/local-ebs-process';

function option(name: string, fallback: string): string {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

/** User and system CPU seconds of a process so far (Linux /proc), or undefined elsewhere. */
function cpuSeconds(pid: number | undefined, thread?: number): { user: number; system: number } | undefined {
  try {
    const file = thread === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${thread}/stat`;
    const fields = readFileSync(file, 'utf8').split(') ')[1].split(' ');
    // utime and stime are fields 14 and 15 of stat(5); here counted from field 3.
    return { user: Number(fields[11]) / 100, system: Number(fields[12]) / 100 };
  } catch {
    return undefined;
  }
}

async function main(): Promise<void> {
  const clients = Number(option('clients', '64'));
  const seconds = Number(option('seconds', '10'));
  const faults = option('faults', '');
  const attach = option('endpoint', '');
  const server = attach
    ? {
        endpoint: attach,
        credentials: { accessKeyId: option('access-key-id', ''), secretAccessKey: option('secret-access-key', '') },
        child: { pid: Number(option('pid', '0')) || undefined },
        dataDir: '',
        stop: async () => null,
      }
    : await startLocalEbsProcess(faults ? { faults } : {});
  const url = new URL(server.endpoint);
  const agent = new http.Agent({ keepAlive: true, maxSockets: clients });
  const signer = new SignatureV4({ credentials: server.credentials, region: 'us-east-1', service: 'ebs', sha256: Sha256 });

  const send = async (
    method: string,
    path: string,
    headers: Record<string, string>,
    body: Buffer,
  ): Promise<{ status: number; body: string }> => {
    const signed = await signer.sign({
      method,
      protocol: 'http:',
      hostname: url.hostname,
      port: Number(url.port),
      path,
      query: {},
      headers: { host: url.host, 'content-length': String(body.length), ...headers },
      body,
    });
    return new Promise((resolve, reject) => {
      const request = http.request({ method, host: url.hostname, port: url.port, path, headers: signed.headers, agent }, (response) => {
        let text = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => (text += chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body: text }));
      });
      request.on('error', reject);
      request.end(body);
    });
  };

  const started = await send('POST', '/snapshots', { 'content-type': 'application/json' }, Buffer.from(JSON.stringify({ VolumeSize: 64 })));
  const snapshotId = (JSON.parse(started.body) as { SnapshotId: string }).SnapshotId;
  const maxBlocks = 64 * 2048;
  const base = randomBytes(BLOCK_SIZE_BYTES);
  let next = 0;
  let ok = 0;
  let failed = 0;
  const latenciesMs: number[] = [];
  const cpuBefore = cpuSeconds(server.child.pid);
  // The event loop's own thread (its id is the process id): the part that cannot use a second core.
  const loopBefore = cpuSeconds(server.child.pid, server.child.pid);
  const deadline = performance.now() + seconds * 1000;
  const t0 = performance.now();

  await Promise.all(
    Array.from({ length: clients }, async () => {
      const data = Buffer.from(base);
      while (performance.now() < deadline && next < maxBlocks) {
        const index = next++;
        // Distinct content per block, so that content addressing never skips a write.
        data.writeUInt32BE(index, 0);
        const checksum = createHash('sha256').update(data).digest('base64');
        const t = performance.now();
        const response = await send(
          'PUT',
          `/snapshots/${snapshotId}/blocks/${index}`,
          {
            'content-type': 'application/octet-stream',
            'x-amz-content-sha256': 'UNSIGNED-PAYLOAD',
            'x-amz-data-length': String(BLOCK_SIZE_BYTES),
            'x-amz-checksum': checksum,
            'x-amz-checksum-algorithm': 'SHA256',
          },
          data,
        );
        latenciesMs.push(performance.now() - t);
        if (response.status === 201) ok++;
        else failed++;
      }
    }),
  );
  const elapsedS = (performance.now() - t0) / 1000;
  latenciesMs.sort((a, b) => a - b);
  const pct = (p: number) => latenciesMs[Math.min(latenciesMs.length - 1, Math.floor(p * latenciesMs.length))].toFixed(1);
  const cpuAfter = cpuSeconds(server.child.pid);
  const loopAfter = cpuSeconds(server.child.pid, server.child.pid);
  const stats = await getLocalEbsStats(server.endpoint, server.credentials).catch(() => ({ responses: {} as Record<string, number> }));
  agent.destroy();
  await server.stop();
  await stopAllLocalEbsProcesses();
  if (server.dataDir) rmSync(server.dataDir, { recursive: true, force: true });
  process.stdout.write(
    `${clients} clients, ${elapsedS.toFixed(1)} s: ${ok} PUTs acknowledged (${failed} failed), ` +
      `${(ok / elapsedS).toFixed(0)} PUT/s, ${((ok * BLOCK_SIZE_BYTES) / elapsedS / 2 ** 20).toFixed(0)} MiB/s, ` +
      `latency p50 ${pct(0.5)} ms p99 ${pct(0.99)} ms; server counted ${stats.responses['201'] ?? 0} x 201` +
      (cpuBefore && cpuAfter
        ? `; server CPU per PUT: ${(((cpuAfter.user - cpuBefore.user) * 1000) / ok).toFixed(2)} ms user + ${(((cpuAfter.system - cpuBefore.system) * 1000) / ok).toFixed(2)} ms system`
        : '') +
      (loopBefore && loopAfter
        ? ` (event loop thread: ${(((loopAfter.user + loopAfter.system - loopBefore.user - loopBefore.system) * 1000) / ok).toFixed(2)} ms)`
        : '') +
      '\n',
  );
}

main().catch(async (error) => {
  process.stderr.write(`load: ${String(error)}\n`);
  await stopAllLocalEbsProcesses();
  process.exitCode = 1;
});
