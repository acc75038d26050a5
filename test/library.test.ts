// The library API (src/index.ts) against a local-ebs process over HTTP: a
// caller's own SDK EBSClient or a client config, Buffer and stream sources,
// progress callbacks, cancellation with an AbortSignal (the snapshot stays
// pending, nothing is completed), a mount's unmount refused while its file is
// open, and options checked before any request.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { EBSClient, ListSnapshotBlocksCommand } from '@aws-sdk/client-ebs';
import { download, mount, upload, type Progress } from '../src/index';
import { getLocalEbsStats, setLocalEbsFaults } from '../src/local-ebs/admin-client';
import { isMountPoint } from '../src/fuse/mountinfo';
import { ScenarioContext } from './scenarios/support';

const B = 524288;
// The SDK's notice about Node 20 would land in the test output for the caller-made client.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

describe('library: upload, download and mount as functions', function () {
  this.timeout(120_000);
  const context = new ScenarioContext();
  const clientConfig = () => ({
    endpoint: context.endpoint.endpoint,
    region: 'us-east-1',
    credentials: { accessKeyId: context.endpoint.accessKeyId, secretAccessKey: context.endpoint.secretAccessKey },
  });
  const completes = async (): Promise<number> =>
    (await getLocalEbsStats(context.endpoint.endpoint, context.endpoint)).requests.CompleteSnapshot ?? 0;

  before(async () => {
    await context.setUp();
  });

  after(async () => {
    await context.tearDown();
  });

  it("uploads a Buffer through a caller's own EBSClient, which stays usable; progress ends at the volume size", async () => {
    const sdk = new EBSClient(clientConfig());
    try {
      const image = randomBytes(3 * B + 10);
      const reports: Progress[] = [];
      const result = await upload({
        source: image,
        volumeSizeGiB: 1,
        client: sdk,
        onProgress: (progress) => reports.push(progress),
        progressIntervalMs: 10,
      });
      assert.deepEqual([result.status, result.blocksPut, result.volumeSizeGiB], ['completed', 4, 1]);
      const last = reports[reports.length - 1];
      assert.deepEqual([last.phase, last.doneBytes, last.volumeBytes, last.blocksTransferred], ['uploading', 1073741824, 1073741824, 4]);
      const listed = await sdk.send(new ListSnapshotBlocksCommand({ SnapshotId: result.snapshotId }));
      assert.deepEqual(
        listed.Blocks!.map((block) => block.BlockIndex),
        [0, 1, 2, 3],
      );

      const copy = context.file('buffer-copy.img');
      const downloaded = await download({ snapshotId: result.snapshotId, filePath: copy, client: sdk });
      assert.deepEqual([downloaded.status, downloaded.blocksFetched], ['completed', 4]);
      const handle = await open(copy, 'r');
      try {
        const back = Buffer.alloc(image.length);
        await handle.read(back, 0, back.length, 0);
        assert.ok(back.equals(image));
      } finally {
        await handle.close();
      }
    } finally {
      sdk.destroy();
    }
  });

  it('an aborted signal stops an upload: nothing is completed, and one aborted before the call sends nothing', async () => {
    const before = await completes();
    const already = new AbortController();
    already.abort(new Error('not wanted'));
    await assert.rejects(
      upload({ source: Buffer.alloc(B, 1), volumeSizeGiB: 1, clientConfig: clientConfig(), signal: already.signal }),
      /not wanted/,
    );

    await setLocalEbsFaults(context.endpoint.endpoint, context.endpoint, 'latency=200ms,ops=put');
    try {
      const controller = new AbortController();
      const stream = Readable.from(
        (function* () {
          for (let block = 0; block < 64; block++) yield randomBytes(B);
        })(),
      );
      const uploading = upload({
        source: stream,
        volumeSizeGiB: 1,
        clientConfig: clientConfig(),
        concurrency: 2,
        signal: controller.signal,
      });
      setTimeout(() => controller.abort(), 300);
      await assert.rejects(uploading, /was interrupted; the snapshot stays pending/);
    } finally {
      await setLocalEbsFaults(context.endpoint.endpoint, context.endpoint, '');
    }
    assert.equal(await completes(), before);
  });

  it('mount: unmount is refused while the file is open and the mount goes on; aborting the signal unmounts once the file is closed and leaves the snapshot pending', async () => {
    const mountpoint = context.file('lib-mnt');
    await mkdir(mountpoint);
    const stateDir = context.file('lib-state');
    const controller = new AbortController();
    const mounted = await mount({ mountpoint, volumeSizeGiB: 1, clientConfig: clientConfig(), stateDir, signal: controller.signal });
    assert.equal(mounted.filePath, path.join(mountpoint, 'snapshot.img'));
    const before = await completes();
    const handle = await open(mounted.filePath, 'r+');
    try {
      await handle.write(Buffer.from('abc'), 0, 3, 0);
      await assert.rejects(mounted.unmount(), /is busy: .* is still open \(1 handle;/);
      assert.equal(await isMountPoint(mountpoint), true);
      assert.equal(mounted.progress().phase, 'mounted');
      // Aborted while the file is open: the mount waits for it to be closed.
      controller.abort();
      await new Promise((resolve) => setTimeout(resolve, 500));
      assert.equal(await isMountPoint(mountpoint), true, 'still mounted while the file is open');
    } finally {
      await handle.close();
    }
    for (let attempt = 0; attempt < 100 && (await isMountPoint(mountpoint)); attempt++)
      await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(await isMountPoint(mountpoint), false, 'unmounted by the abort once the file was closed');
    const ended = await mounted.unmount();
    assert.deepEqual(ended, { snapshotId: mounted.snapshotId, status: 'pending' });
    assert.equal(await completes(), before);
    assert.equal(await isMountPoint(mountpoint), false);
  });

  it('checks options before any request', async () => {
    await assert.rejects(
      upload({ source: Buffer.alloc(1), volumeSizeGiB: 1, concurrency: 0, clientConfig: clientConfig() }),
      /concurrency must be an integer from 1 to 1024, not 0/,
    );
    await assert.rejects(
      upload({ source: Readable.from([Buffer.alloc(1)]), clientConfig: clientConfig() }),
      /volumeSizeGiB is required to upload a stream or bytes/,
    );
    await assert.rejects(upload({ source: context.file('missing.img'), clientConfig: clientConfig() }), /missing\.img does not exist/);
  });
});
