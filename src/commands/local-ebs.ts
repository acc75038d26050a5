import type { Command } from 'commander';
import { UserError } from '../errors';

export function registerLocalEbsCommand(program: Command): void {
  program
    .command('local-ebs')
    .description('run the EBS direct API server (local-ebs)')
    .action(() => {
      throw new UserError('not yet: see issue 2');
    });
}
