// The record of the server that holds a local-ebs data directory (DIR/server.json):
// its pid, endpoint and key pair, so that `--local DIR` of another command attaches
// to it instead of starting a second server on the same data. One server holds a
// directory at a time; a record whose process is gone is taken over.
import { readFileSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../durable-file';
import { describeError, UserError } from '../errors';
import { claimPidFile, isProcessAlive } from '../pid-file';

const SERVER_FILE = 'server.json';

export interface RunningLocalEbsRecord {
  pid: number;
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
}

export function serverRecordFile(dataDir: string): string {
  return path.join(dataDir, SERVER_FILE);
}

function parseServerRecord(text: string): RunningLocalEbsRecord | undefined {
  try {
    const value = JSON.parse(text) as Partial<RunningLocalEbsRecord>;
    if (
      typeof value.pid !== 'number' ||
      typeof value.endpoint !== 'string' ||
      typeof value.accessKeyId !== 'string' ||
      typeof value.secretAccessKey !== 'string'
    ) {
      return undefined;
    }
    return { pid: value.pid, endpoint: value.endpoint, accessKeyId: value.accessKeyId, secretAccessKey: value.secretAccessKey };
  } catch {
    return undefined;
  }
}

/**
 * The server that holds `dataDir`, so that an embedded client can attach to it;
 * undefined when none is recorded, or its process is gone.
 */
export function readRunningLocalEbs(dataDir: string): RunningLocalEbsRecord | undefined {
  let text: string;
  try {
    text = readFileSync(serverRecordFile(path.resolve(dataDir)), 'utf8');
  } catch {
    return undefined;
  }
  const record = parseServerRecord(text);
  if (!record || record.endpoint === '' || !isProcessAlive(record.pid)) return undefined;
  return record;
}

/** Writes the record once the server listens: from then on other commands attach to it. */
export async function writeServerRecord(serverFile: string, record: RunningLocalEbsRecord): Promise<void> {
  await writeFileAtomic(serverFile, JSON.stringify(record), 0o600);
}

/** Removes the record if it is still this process's (a later server may have taken the directory over). */
export async function removeOwnServerRecord(serverFile: string): Promise<void> {
  const current = await fsp.readFile(serverFile, 'utf8').catch(() => '');
  if (parseServerRecord(current)?.pid === process.pid) await fsp.rm(serverFile, { force: true });
}

/** Takes the data directory for this process, or says which live server holds it. */
export async function acquireDataDir(dataDir: string, serverFile: string): Promise<void> {
  // The record of a server still starting: its endpoint is filled in once it listens.
  const starting = JSON.stringify({ pid: process.pid, endpoint: '', accessKeyId: '', secretAccessKey: '' });
  let holder: Awaited<ReturnType<typeof claimPidFile>>;
  try {
    holder = await claimPidFile(serverFile, starting, { pidOf: (text) => parseServerRecord(text)?.pid, takeOverOwn: false });
  } catch (error) {
    throw new UserError(`cannot use the local-ebs data directory ${dataDir}: ${describeError(error)}`);
  }
  if (holder === undefined) return;
  if (holder.pid === undefined) throw new UserError(`local-ebs data directory ${dataDir} is being taken by another process; try again`);
  const endpoint = parseServerRecord(holder.text)?.endpoint;
  throw new UserError(`local-ebs data directory ${dataDir} is in use by pid ${holder.pid} at ${endpoint || '(starting)'}`);
}
