import type { Command } from 'commander';
import { UserError } from '../errors';

export function registerMountCommand(program: Command): void {
  program
    .command('mount')
    .argument('<mountpoint>')
    .description('start a snapshot and mount it as MOUNTPOINT/snapshot.img')
    .action(() => {
      throw new UserError('not yet: see issue 3');
    });
}
