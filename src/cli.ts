#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Command, CommanderError } from 'commander';
import { describeError } from './errors';
import { libfuseVersion } from './fuse/fuse-mount';
import { registerLocalEbsCommand } from './commands/local-ebs';
import { registerMountCommand } from './commands/mount';
import { registerCompleteCommand } from './commands/complete';
import { registerDownloadCommand } from './commands/download';
import { registerStatusCommand } from './commands/status';
import { registerUnmountCommand } from './commands/unmount';
import { registerUploadCommand } from './commands/upload';

const program = new Command('ebs-fuse')
  .description('A pending Amazon EBS snapshot as one writable file, over FUSE')
  .option('--verbose', 'print stack traces with errors')
  .option('-V, --version', 'print the versions of ebs-fuse, Node.js and libfuse, then exit')
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride();

program.on('option:version', () => {
  process.stdout.write(`${versionLine()}\n`);
  process.exit(0);
});

registerMountCommand(program);
registerUnmountCommand(program);
registerStatusCommand(program);
registerUploadCommand(program);
registerDownloadCommand(program);
registerCompleteCommand(program);
registerLocalEbsCommand(program);

/** Its own package.json: ../package.json from both src/ and dist/. */
function versionLine(): string {
  const { version } = JSON.parse(readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version: string };
  return `ebs-fuse ${version} (Node.js ${process.version}, libfuse ${libfuseVersion()})`;
}

function isVerbose(): boolean {
  return process.argv.includes('--verbose');
}

async function main(): Promise<void> {
  try {
    await program.parseAsync(process.argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      // Commander already printed its one-line message (or the help text).
      process.exitCode = error.exitCode;
      return;
    }
    process.stderr.write(`ebs-fuse: ${describeError(error)}\n`);
    if (isVerbose() && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
    process.exitCode = (error as { exitCode?: number }).exitCode ?? 1;
  }
}

void main();
