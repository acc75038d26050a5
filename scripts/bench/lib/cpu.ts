// The whole machine's CPU time from /proc/stat, read around a measurement: how
// much of the cores a variant kept busy (every process: dd, the kernel's FUSE
// work, the file system process, local-ebs) and how long CPUs sat in iowait.
// Other load on the machine shows up here too, which is why the report prints
// the load average next to it.
import { readFile } from 'node:fs/promises';

/** USER_HZ, the unit of /proc/stat on Linux (100 on every architecture the kernel builds today). */
const TICKS_PER_SECOND = 100;

export interface MachineCpu {
  busySeconds: number;
  iowaitSeconds: number;
}

export async function readMachineCpu(): Promise<MachineCpu> {
  const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0];
  // cpu  user nice system idle iowait irq softirq steal guest guest_nice
  const [user, nice, system, , iowait, irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
  return {
    busySeconds: (user + nice + system + irq + softirq + (steal || 0)) / TICKS_PER_SECOND,
    iowaitSeconds: iowait / TICKS_PER_SECOND,
  };
}

export function cpuBetween(before: MachineCpu, after: MachineCpu): MachineCpu {
  return { busySeconds: after.busySeconds - before.busySeconds, iowaitSeconds: after.iowaitSeconds - before.iowaitSeconds };
}
