// A client for local-ebs's admin routes (outside the EBS URI space, SigV4-signed
// for service `ebs` like every request): tests and benchmarks count requests at
// the server and switch faults at run time.
import http from 'node:http';
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256 } from '../ebs/checksum';
import type { LocalEbsStats } from './server';

export interface AdminCredentials {
  accessKeyId: string;
  secretAccessKey: string;
}

const ADMIN_TIMEOUT_MS = 10_000;
const ADMIN_RESPONSE_MAX_BYTES = 1024 * 1024;

async function adminRequest(
  endpoint: string,
  credentials: AdminCredentials,
  method: 'GET' | 'POST',
  pathname: string,
  body: string,
): Promise<string> {
  const url = new URL(endpoint);
  const signer = new SignatureV4({ credentials, region: 'us-east-1', service: 'ebs', sha256: Sha256 });
  const bodyBytes = Buffer.from(body, 'utf8');
  const signed = await signer.sign({
    method,
    protocol: url.protocol,
    hostname: url.hostname,
    port: url.port === '' ? undefined : Number(url.port),
    path: pathname,
    query: {},
    headers: { host: url.host, 'content-type': 'text/plain', 'content-length': String(bodyBytes.length) },
    body: bodyBytes,
  });
  return new Promise((resolve, reject) => {
    const request = http.request(
      { method, host: url.hostname, port: url.port, path: pathname, headers: signed.headers, timeout: ADMIN_TIMEOUT_MS },
      (response) => {
        const chunks: Buffer[] = [];
        let length = 0;
        response.on('data', (chunk: Buffer) => {
          length += chunk.length;
          if (length > ADMIN_RESPONSE_MAX_BYTES) request.destroy(new Error('local-ebs admin response too large'));
          else chunks.push(chunk);
        });
        response.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          if (response.statusCode === 200) resolve(text);
          else
            reject(
              new Error(
                `local-ebs ${method} ${pathname} answered ${response.statusCode} ${response.headers['x-amzn-errortype'] ?? ''}: ${text}`,
              ),
            );
        });
        response.on('error', reject);
      },
    );
    request.on('timeout', () => request.destroy(new Error(`local-ebs ${method} ${pathname} timed out`)));
    request.on('error', reject);
    request.end(bodyBytes);
  });
}

export async function getLocalEbsStats(endpoint: string, credentials: AdminCredentials): Promise<LocalEbsStats> {
  return JSON.parse(await adminRequest(endpoint, credentials, 'GET', '/_local-ebs/stats', '')) as LocalEbsStats;
}

/** An empty spec clears every fault. */
export async function setLocalEbsFaults(endpoint: string, credentials: AdminCredentials, spec: string): Promise<void> {
  await adminRequest(endpoint, credentials, 'POST', '/_local-ebs/faults', spec);
}

/**
 * Moves a pending snapshot to `error` now, as its idle Timeout would, so that a test
 * can meet "snapshot in error" without waiting. Idempotent; refused (rejects) for a
 * completed or unknown snapshot.
 */
export async function expireLocalEbsSnapshot(endpoint: string, credentials: AdminCredentials, snapshotId: string): Promise<void> {
  await adminRequest(endpoint, credentials, 'POST', `/_local-ebs/snapshots/${encodeURIComponent(snapshotId)}/expire`, '');
}
