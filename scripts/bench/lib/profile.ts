// Reads a V8 CPU profile (node --cpu-prof) of a mount and sorts the main thread's
// time into the costs the performance goals ask about: hashing, copying, garbage collection,
// promise machinery, file I/O calls, the HTTP client, waiting (idle).
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  totalSeconds: number;
  /** Seconds of main-thread time per category, largest first. */
  categories: Array<{ category: string; seconds: number }>;
  /** The largest self-time functions, for the record. */
  topFunctions: Array<{ name: string; seconds: number }>;
}

/** Categories by the sampled function and its callers; the first rule that matches wins. */
const RULES: Array<{ category: string; matches: (frame: ProfileNode['callFrame'], stack: string) => boolean }> = [
  { category: 'idle (waiting for FUSE, disk, sockets)', matches: (f) => f.functionName === '(idle)' },
  { category: 'garbage collection', matches: (f) => f.functionName === '(garbage collector)' },
  {
    category: 'SHA-256: SigV4 payload hash in the SDK',
    matches: (_f, stack) => /getPayloadHash/.test(stack) && /\b(update|digest)\b/.test(stack.split(' < ')[0]),
  },
  {
    category: 'SHA-256: other (flusher, checksums)',
    matches: (f) => /crypto\/hash/.test(f.url) && (f.functionName === 'update' || f.functionName === 'digest'),
  },
  {
    category: 'buffer copies and allocation',
    matches: (f) => /^(_copyActual|_copy|copy|FastBuffer|allocate|alloc|concat|fill)$/.test(f.functionName) && /buffer/.test(f.url),
  },
  {
    category: 'socket writes (loopback TCP, in the kernel)',
    matches: (f, stack) => f.url === '' && /writevGeneric|writeGeneric/.test(stack),
  },
  {
    category: 'file I/O calls (read-back store, journal)',
    matches: (f, stack) => f.url === '' && /fsCall|fdatasync|FileHandle|openFileHandle/.test(stack),
  },
  {
    category: 'promise machinery (microtasks)',
    matches: (f) => f.functionName === 'processTicksAndRejections' || f.functionName === 'runMicrotasks',
  },
  { category: 'AWS SDK and HTTP client (JS)', matches: (f) => /@aws-sdk|@smithy|node:_http|node:net|streams\//.test(f.url) },
  {
    category: 'ebs-fuse core and adapter (JS)',
    matches: (f) => /\/(src|dist)\/(core|fuse|ebs)\//.test(f.url) || /async-mutex|lru-cache|fuse-native/.test(f.url),
  },
];

export async function summarizeProfile(directory: string): Promise<ProfileSummary> {
  const file = (await readdir(directory)).find((name) => name.endsWith('.cpuprofile'));
  if (!file) throw new Error(`no .cpuprofile in ${directory}`);
  const profile = JSON.parse(await readFile(path.join(directory, file), 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parentOf = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parentOf.set(child, node.id);
  const selfMicroseconds = new Map<number, number>();
  let totalMicroseconds = 0;
  profile.samples.forEach((id, index) => {
    const delta = profile.timeDeltas[index] ?? 0;
    selfMicroseconds.set(id, (selfMicroseconds.get(id) ?? 0) + delta);
    totalMicroseconds += delta;
  });
  const stackOf = (id: number): string => {
    const names: string[] = [];
    for (let at: number | undefined = id, depth = 0; at !== undefined && depth < 8; at = parentOf.get(at), depth += 1)
      names.push(byId.get(at)!.callFrame.functionName);
    return names.join(' < ');
  };
  const categories = new Map<string, number>();
  const functions = new Map<string, number>();
  for (const [id, microseconds] of selfMicroseconds) {
    const frame = byId.get(id)!.callFrame;
    const rule = RULES.find((candidate) => candidate.matches(frame, stackOf(id)));
    const category = rule?.category ?? 'other';
    categories.set(category, (categories.get(category) ?? 0) + microseconds);
    const name = `${frame.functionName || '(anonymous)'} ${frame.url.split('/').slice(-2).join('/')}`.trim();
    functions.set(name, (functions.get(name) ?? 0) + microseconds);
  }
  const sorted = (map: Map<string, number>): Array<[string, number]> => [...map].sort((a, b) => b[1] - a[1]);
  return {
    totalSeconds: totalMicroseconds / 1e6,
    categories: sorted(categories).map(([category, microseconds]) => ({ category, seconds: microseconds / 1e6 })),
    topFunctions: sorted(functions)
      .slice(0, 12)
      .map(([name, microseconds]) => ({ name, seconds: microseconds / 1e6 })),
  };
}
