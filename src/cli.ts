#!/usr/bin/env node
import { Command, CommanderError } from 'commander';
import { describeError } from './errors';
import { registerLocalEbsCommand } from './commands/local-ebs';
import { registerMountCommand } from './commands/mount';
import { registerCompleteCommand } from './commands/complete';
import { registerDownloadCommand } from './commands/download';
import { registerUploadCommand } from './commands/upload';

const program = new Command('ebs-fuse')
  .description('A pending Amazon EBS snapshot as one writable file, over FUSE')
  .option('--verbose', 'print stack traces with errors')
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride();

registerMountCommand(program);
registerUploadCommand(program);
registerDownloadCommand(program);
registerCompleteCommand(program);
registerLocalEbsCommand(program);

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
