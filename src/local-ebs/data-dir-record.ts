// The record of the server that holds a local-ebs data directory (DIR/server.json):
// its pid, endpoint and key pair, so that `--local DIR` of another command attaches
// to it instead of starting a second server on the same data. One server holds a
// directory at a time; a record whose process is gone is taken over.
import { readFileSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../durable-file';
import { UserError } from '../errors';

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

function isProcessAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
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
  // Two attempts: the second after removing the record of a server that is gone.
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await fsp.open(serverFile, 'wx', 0o600);
      await handle.writeFile(JSON.stringify({ pid: process.pid, endpoint: '', accessKeyId: '', secretAccessKey: '' }));
      await handle.close();
      return;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST') throw new UserError(`cannot use the local-ebs data directory ${dataDir}: ${(error as Error).message}`);
    }
    const text = await fsp.readFile(serverFile, 'utf8').catch(() => '');
    const record = parseServerRecord(text);
    if (record && isProcessAlive(record.pid)) {
      throw new UserError(`local-ebs data directory ${dataDir} is in use by pid ${record.pid} at ${record.endpoint || '(starting)'}`);
    }
    await fsp.rm(serverFile, { force: true });
  }
  throw new UserError(`local-ebs data directory ${dataDir} is being taken by another process; try again`);
}
