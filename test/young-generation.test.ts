import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { YOUNG_GENERATION_CAP_BYTES } from '../src/young-generation';

const MODULE = path.join(__dirname, '..', 'src', 'young-generation.ts');

/**
 * A fresh node process that keeps many young objects alive across scavenges
 * (as 64 PUTs in flight do), over many turns of the event loop; it prints the
 * largest young generation it saw, in bytes.
 */
function largestYoungGenerationBytes(capped: boolean): number {
  const program = `
    const v8 = require('node:v8');
    if (${capped}) require(${JSON.stringify(MODULE)}).capYoungGeneration();
    let largest = 0, live = [];
    const turn = (left) => {
      for (let i = 0; i < 50000; i += 1) {
        live.push({ index: i, text: 'x' + i });
        if (live.length > 200000) live = [];
      }
      const young = v8.getHeapSpaceStatistics().find((space) => space.space_name === 'new_space').space_size;
      largest = Math.max(largest, young);
      if (left > 0) setImmediate(turn, left - 1); else console.log(largest);
    };
    turn(80);`;
  const output = execFileSync(process.execPath, ['-r', 'tsx/cjs', '-e', program], { encoding: 'utf8', timeout: 30_000 });
  return Number(output.trim());
}

describe('young generation cap', () => {
  it('stops V8 doubling the young generation past the cap, which it does without it', function () {
    this.timeout(60_000);
    const uncapped = largestYoungGenerationBytes(false);
    assert.ok(
      uncapped > YOUNG_GENERATION_CAP_BYTES,
      `without the cap the young generation reached only ${uncapped} bytes: the load does not test the cap`,
    );
    const capped = largestYoungGenerationBytes(true);
    assert.ok(capped <= YOUNG_GENERATION_CAP_BYTES, `with the cap the young generation reached ${capped} bytes`);
  });
});
