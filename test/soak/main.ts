// `npm run soak`: the reliability scenarios of test/scenarios/reliability-*.test.ts
// run for longer, against real mounts and local-ebs processes on 127.0.0.1:
//   crash    kill -9 of the mount at random points (seeded plans), --resume, complete
//   faults   dd and mkfs.ext4 + loop mount + copy files under 500/throttle/reset/latency
//   outage   local-ebs killed during writes and restarted after SOAK_OUTAGE_S (30 s)
//   memory   RSS of the mount under 200 ms PUTs, once per concurrency
//   gone     the snapshot disappears under a mount that started it (the slow case)
// Every phase has a share of SOAK_MINUTES and stops starting iterations when it is
// used up; every iteration is bounded by its own limits. At the end it prints the
// totals (requests sent, faults injected, bytes verified, bytes lost) and exits 1
// if anything failed or any byte was lost.
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { ScenarioContext, createZeroImage } from '../scenarios/support';
import {
  ServerCounter,
  addFigures,
  compareRange,
  emptyFigures,
  finalFailureLines,
  randomCrashPlan,
  restartLocalEbs,
  runCrashPlan,
  runDdWorkload,
  runExt4Workload,
  runMemory,
  runOutage,
  writeAt,
  writeFsyncClose,
  GIB,
  RELIABILITY_FAULTS,
  MIB,
  type Figures,
} from '../scenarios/reliability-support';

const HELP = `npm run soak [-- --help]
Settings (environment variables):
  SOAK_MINUTES      total time budget, 1-60 (default 20); phases: crash 40%, faults 30%, outage 20%, rest 10%
  SOAK_SEED         base seed of the random plans (default: from the clock; printed)
  SOAK_CRASH_SEEDS  comma-separated seeds: run exactly these crash plans (e.g. one a test printed)
  SOAK_OUTAGE_S     length of each local-ebs outage in seconds (default 30)
  SOAK_PHASES       comma-separated subset of crash,faults,outage,memory,gone (default all)`;

const MINUTES_MAX = 60;
const CRASH_FAULTS = '500=0.05,reset=0.01,latency=0-20ms';

interface PhaseReport extends Figures {
  name: string;
  iterations: number;
  failures: number;
  seconds: number;
  notes: string[];
}

function log(line: string): void {
  process.stdout.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`);
}

function envNumber(name: string, fallback: number, min: number, max: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isFinite(value) || value < min || value > max)
    throw new Error(`${name} must be a number from ${min} to ${max}, not "${text}"`);
  return value;
}

async function phase(
  name: string,
  budgetMs: number,
  faults: string | undefined,
  body: (context: ScenarioContext, report: PhaseReport, deadlineMs: number) => Promise<void>,
): Promise<PhaseReport> {
  const report: PhaseReport = { name, ...emptyFigures(), iterations: 0, failures: 0, seconds: 0, notes: [] };
  const started = Date.now();
  const context = new ScenarioContext();
  log(`== ${name} (up to ${(budgetMs / 60_000).toFixed(1)} min)`);
  try {
    await context.setUp(faults);
    await body(context, report, started + budgetMs);
  } catch (error) {
    report.failures += 1;
    log(`${name}: FAILED: ${(error as Error).message.split('\n').slice(0, 5).join(' | ')}`);
  } finally {
    await context.tearDown().catch((error: unknown) => log(`${name}: tear-down: ${(error as Error).message}`));
  }
  report.seconds = (Date.now() - started) / 1000;
  return report;
}

/** Runs one iteration, counting it and its figures; a failure is reported and the phase goes on. */
async function iteration(report: PhaseReport, what: string, run: () => Promise<Figures>): Promise<void> {
  report.iterations += 1;
  const started = Date.now();
  try {
    const figures = await run();
    addFigures(report, figures);
    log(
      `${report.name} ${what}: ok in ${((Date.now() - started) / 1000).toFixed(1)} s; ${figures.requestsSent} requests, ${figures.faultsInjected} faults, ${(figures.bytesVerified / MIB).toFixed(0)} MiB verified, ${figures.bytesLost} bytes lost`,
    );
    if (figures.bytesLost > 0) report.failures += 1;
  } catch (error) {
    report.failures += 1;
    const lost = (error as { bytesLost?: number }).bytesLost;
    if (lost) report.bytesLost += lost;
    log(
      `${report.name} ${what}: FAILED after ${((Date.now() - started) / 1000).toFixed(1)} s: ${(error as Error).message.split('\n').slice(0, 8).join(' | ')}`,
    );
  }
}

async function main(): Promise<number> {
  if (process.argv.includes('--help') || process.argv.includes('-h')) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  const minutes = envNumber('SOAK_MINUTES', 20, 1, MINUTES_MAX);
  const baseSeed = envNumber('SOAK_SEED', Date.now() % 1_000_000, 0, 2 ** 31);
  const outageMs = envNumber('SOAK_OUTAGE_S', 30, 1, 600) * 1000;
  const explicitSeeds = (process.env.SOAK_CRASH_SEEDS ?? '')
    .split(',')
    .filter((text) => text.trim() !== '')
    .map(Number);
  const phases = new Set((process.env.SOAK_PHASES ?? 'crash,faults,outage,memory,gone').split(',').map((name) => name.trim()));
  const budgetMs = minutes * 60_000;
  log(`soak: ${minutes} min, base seed ${baseSeed}, outage ${outageMs / 1000} s, phases ${[...phases].join(',')}`);
  const started = Date.now();
  const reports: PhaseReport[] = [];
  let nextSeed = baseSeed;

  if (phases.has('crash')) {
    reports.push(
      await phase('crash', budgetMs * 0.4, CRASH_FAULTS, async (context, report, deadlineMs) => {
        const seeds = explicitSeeds.length > 0 ? explicitSeeds : undefined;
        let kills = 0;
        let onTarget = 0;
        for (let i = 0; seeds ? i < seeds.length : Date.now() < deadlineMs; i += 1) {
          const seed = seeds ? seeds[i] : nextSeed++;
          await iteration(report, `seed ${seed}`, async () => {
            const plan = randomCrashPlan(seed, { chunks: 8, kills: 3, spanBytes: 48 * MIB, maxChunkBytes: 24 * MIB, finalFlushKill: true });
            const outcome = await runCrashPlan(context, plan, (line) => log(`  ${line}`));
            kills += outcome.kills;
            onTarget += outcome.killsOnTarget;
            return outcome;
          });
        }
        report.notes.push(`${kills} kills -9 (${onTarget} while dd was still writing or syncing, or right after its fsync)`);
      }),
    );
  }

  if (phases.has('faults')) {
    reports.push(
      await phase('faults', budgetMs * 0.3, RELIABILITY_FAULTS, async (context, report, deadlineMs) => {
        let failedFsyncLines = 0;
        for (let i = 0; Date.now() < deadlineMs; i += 1) {
          const seed = nextSeed++;
          await iteration(report, `${i % 2 === 0 ? 'dd' : 'ext4'} seed ${seed}`, async () => {
            const outcome =
              i % 2 === 0
                ? await runDdWorkload(context, { seed, chunks: 12, spanBytes: 256 * MIB, maxChunkBytes: 32 * MIB, cacheSize: '64MiB' })
                : await runExt4Workload(context, { seed, files: 1000, largeFiles: 4, cacheSize: '64MiB' });
            const failures = finalFailureLines(outcome.mountStderr);
            failedFsyncLines += failures.length;
            if (failures.length > 0) throw new Error(`an fsync or upload failed under faults: ${failures[0]}`);
            return outcome;
          });
        }
        report.notes.push(`${failedFsyncLines} failed fsync/close/upload lines`);
      }),
    );
  }

  if (phases.has('outage')) {
    reports.push(
      await phase('outage', budgetMs * 0.2, undefined, async (context, report, deadlineMs) => {
        let eio = 0;
        let outages = 0;
        while (Date.now() < deadlineMs) {
          const seed = nextSeed++;
          await iteration(report, `seed ${seed}`, async () => {
            const outcome = await runOutage(context, {
              seed,
              outageMs,
              chunks: 6,
              chunkBytes: 16 * MIB,
              cacheSize: '64MiB',
              attemptsPerChunk: 6,
              log: (line) => log(`  ${line}`),
            });
            eio += outcome.eioFailures;
            outages += 1;
            return outcome;
          });
        }
        report.notes.push(`${outages} outages of ${outageMs / 1000} s; ${eio} dd runs failed with EIO and succeeded when run again`);
      }),
    );
  }

  if (phases.has('memory')) {
    reports.push(
      await phase('memory', budgetMs * 0.05, 'latency=200ms,ops=put', async (context, report) => {
        for (const [cacheMiB, concurrency, writeMiB] of [
          [32, 4, 128],
          [256, 64, 768],
          [16, 64, 256],
        ]) {
          await iteration(report, `--cache-size ${cacheMiB}MiB --upload-concurrency ${concurrency}`, async () => {
            const outcome = await runMemory(context, {
              cacheSizeBytes: cacheMiB * MIB,
              uploadConcurrency: concurrency,
              putLatencyMs: 200,
              writeBytes: writeMiB * MIB,
              log: (line) => log(`  ${line}`),
            });
            const boundBytes = (cacheMiB + 150) * MIB;
            report.notes.push(
              `cache ${cacheMiB} MiB, ${concurrency} PUTs in flight, ${writeMiB} MiB written: max RSS ${(outcome.maxRssBytes / MIB).toFixed(0)} MiB (bound ${boundBytes / MIB}), dd ${(outcome.writeMs / 1000).toFixed(1)} s (at least ${(outcome.writeLowerBoundMs / 1000).toFixed(1)} s)`,
            );
            if (outcome.maxRssBytes >= boundBytes) throw new Error(`max RSS ${outcome.maxRssBytes} bytes is over the bound ${boundBytes}`);
            if (outcome.writeMs < outcome.writeLowerBoundMs) throw new Error('dd finished faster than the uploads allow: the cache grew');
            if (outcome.ddStderr !== '') throw new Error(`dd: ${outcome.ddStderr}`);
            return outcome;
          });
        }
      }),
    );
  }

  if (phases.has('gone')) {
    reports.push(
      await phase('gone', budgetMs * 0.05, undefined, async (context, report) => {
        await iteration(report, 'the snapshot disappears under the mount that started it', async () => {
          // Right after StartSnapshot, ResourceNotFound is retried (AWS can send it for a while): the slow case.
          const mount = await context.mount(1);
          const data = context.file('gone.bin');
          await writeFile(data, randomBytes(2 * MIB));
          const counter = new ServerCounter();
          await restartLocalEbs(context, counter, { pauseMs: 0, dataDir: context.file('empty-local-ebs') });
          const failed = await writeFsyncClose(mount.filePath, 5 * MIB, data, 300_000);
          report.notes.push(
            `snapshot gone under a fresh mount: fsync ${failed.fsyncError} after ${(failed.fsyncMs / 1000).toFixed(1)} s, close ${failed.closeError} after ${(failed.closeMs / 1000).toFixed(1)} s (bound 120 s)`,
          );
          if (failed.fsyncError !== 'EIO' || failed.closeError !== 'EIO')
            throw new Error(`fsync ${failed.fsyncError}, close ${failed.closeError}`);
          if (failed.fsyncMs >= 120_000 || failed.closeMs >= 120_000) throw new Error('EIO came later than 2 minutes');
          const expected = context.file('gone-expected.img');
          await createZeroImage(expected, GIB);
          await writeAt(expected, 5 * MIB, await readFile(data));
          if ((await compareRange(expected, mount.filePath, 0, 16 * MIB)) >= 0) throw new Error('the dirty data did not read back');
          const started = Date.now();
          const result = await mount.stop('SIGINT', 300_000);
          report.notes.push(`unmount with the snapshot gone: exit ${result.code} after ${((Date.now() - started) / 1000).toFixed(1)} s`);
          if (result.code !== 1) throw new Error(`unmount exited ${result.code}`);
          await counter.collect(context);
          return { requestsSent: counter.requests, faultsInjected: 0, bytesVerified: 16 * MIB, bytesLost: 0 };
        });
      }),
    );
  }

  const total = emptyFigures();
  let failures = 0;
  log('');
  log(`soak finished in ${((Date.now() - started) / 60_000).toFixed(1)} min (base seed ${baseSeed})`);
  log('phase     iterations  failures  requests  faults   verified MiB  lost bytes   time s');
  for (const report of reports) {
    addFigures(total, report);
    failures += report.failures;
    log(
      `${report.name.padEnd(9)} ${String(report.iterations).padStart(10)}  ${String(report.failures).padStart(8)}  ${String(report.requestsSent).padStart(8)}  ${String(report.faultsInjected).padStart(6)}  ${(report.bytesVerified / MIB).toFixed(0).padStart(12)}  ${String(report.bytesLost).padStart(10)}  ${report.seconds.toFixed(0).padStart(7)}`,
    );
    for (const note of report.notes) log(`          ${note}`);
  }
  const kinds = Object.entries(total.faultsByKind ?? {})
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([kind, count]) => `${kind} ${count}`);
  log(`faults injected by kind: ${kinds.join(', ') || 'none'}`);
  log(
    `TOTAL: requests sent ${total.requestsSent}, faults injected ${total.faultsInjected}, bytes verified ${total.bytesVerified} (${(total.bytesVerified / GIB).toFixed(1)} GiB), bytes lost ${total.bytesLost}, failures ${failures}`,
  );
  return failures === 0 && total.bytesLost === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`soak: ${(error as Error).message}\n`);
    process.exit(2);
  },
);
