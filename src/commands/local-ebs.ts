import type { Command } from 'commander';
import { randomBytes } from 'node:crypto';
import { UserError } from '../errors';
import { DEFAULT_HOST, startLocalEbs } from '../local-ebs/server';
import { FaultSpecError, parseFaultSpec } from '../local-ebs/faults';

export const DEFAULT_LOCAL_EBS_DATA_DIR = './.ebs-local';
export const DEFAULT_LOCAL_EBS_PORT = 8455;

interface LocalEbsCommandOptions {
  data: string;
  host: string;
  port: string;
  accessKeyId?: string;
  secretAccessKey?: string;
  faults?: string;
}

function parsePort(text: string): number {
  if (!/^[0-9]{1,5}$/.test(text) || Number(text) > 65535)
    throw new UserError(`invalid --port ${text}: give a number from 0 to 65535 (0 picks a free port)`);
  return Number(text);
}

/** An access key ID in AWS's shape (AKIA + 16 upper-case letters/digits) and a 40-character secret. */
function generateKeyPair(): { accessKeyId: string; secretAccessKey: string } {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const id = [...randomBytes(16)].map((byte) => alphabet[byte % alphabet.length]).join('');
  return { accessKeyId: `AKIA${id}`, secretAccessKey: randomBytes(30).toString('base64') };
}

export function registerLocalEbsCommand(program: Command): void {
  program
    .command('local-ebs')
    .description('run the EBS direct API server (local-ebs) until SIGINT or SIGTERM')
    .option('--data <dir>', 'data directory', DEFAULT_LOCAL_EBS_DATA_DIR)
    .option('--host <host>', 'address to bind', DEFAULT_HOST)
    .option('--port <n>', 'port to listen on (0 picks a free one)', String(DEFAULT_LOCAL_EBS_PORT))
    .option('--access-key-id <id>', 'the access key ID clients sign with (generated when absent)')
    .option('--secret-access-key <key>', 'the secret access key clients sign with (generated when absent)')
    .option(
      '--faults <spec>',
      'inject faults, e.g. 500=0.1,throttle=0.05,reset=0.01,latency=0-50ms,rate=1000,corrupt=0.01,deny=0.01,expired=0.01,ops=put+get (see docs/SEMANTICS.md)',
    )
    .action(async (options: LocalEbsCommandOptions) => {
      const port = parsePort(options.port);
      try {
        parseFaultSpec(options.faults ?? '');
      } catch (error) {
        if (error instanceof FaultSpecError) throw new UserError(error.message);
        throw error;
      }
      if ((options.accessKeyId === undefined) !== (options.secretAccessKey === undefined)) {
        throw new UserError('give both --access-key-id and --secret-access-key, or neither to have a pair generated');
      }
      let credentials: { accessKeyId: string; secretAccessKey: string };
      if (options.accessKeyId !== undefined && options.secretAccessKey !== undefined) {
        credentials = { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey };
      } else {
        credentials = generateKeyPair();
      }
      const server = await startLocalEbs({
        dataDir: options.data,
        host: options.host,
        port,
        ...credentials,
        faults: options.faults,
        log: (line) => process.stderr.write(`${line}\n`),
      });
      // The handlers are in place before the line is out: whoever reads it may signal at once.
      const stopped = new Promise<void>((resolve) => {
        const stop = (): void => {
          process.removeListener('SIGINT', stop);
          process.removeListener('SIGTERM', stop);
          resolve();
        };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      // Only once the server runs: a failed start (a port in use) stays one line.
      if (options.accessKeyId === undefined) {
        process.stderr.write(
          `local-ebs: generated credentials for this run:\n  AWS_ACCESS_KEY_ID=${credentials.accessKeyId}\n  AWS_SECRET_ACCESS_KEY=${credentials.secretAccessKey}\n`,
        );
      }
      process.stdout.write(`local-ebs listening on ${server.endpoint}\n`);
      await stopped;
      await server.close();
    });
}
