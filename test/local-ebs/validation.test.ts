import assert from 'node:assert/strict';
import { EbsApiError } from '../../src/local-ebs/errors';
import {
  parseStrictInt,
  validateBlockIndexText,
  validateBlockToken,
  validateCompleteHeaders,
  validatePage,
  validatePutHeaders,
  validateSnapshotId,
  validateStartSnapshot,
  checkBlockIndexInVolume,
} from '../../src/local-ebs/validation';

function reasonOf(call: () => unknown): string | undefined {
  try {
    call();
  } catch (error) {
    assert.ok(error instanceof EbsApiError, `expected an EbsApiError, got ${String(error)}`);
    assert.equal(error.code, 'ValidationException');
    assert.equal(error.httpStatus, 400);
    return error.reason;
  }
  assert.fail('expected a ValidationException');
}

function headers(values: Record<string, string>): (name: string) => string | undefined {
  return (name) => values[name];
}

const GOOD_CHECKSUM = 'B4VNL+8pega6gWheZgwzLeNtXRjVRpJ9MNqtbX/aFUE=';

describe('local-ebs validation', () => {
  it('snapshot IDs: pattern and length', () => {
    assert.equal(validateSnapshotId('snap-0123abcd'), 'snap-0123abcd');
    for (const bad of ['', 'snap-', 'snap-ABC', 'vol-123', 'snap-12/../x', `snap-${'a'.repeat(60)}`, 'snap-12 ']) {
      assert.equal(
        reasonOf(() => validateSnapshotId(bad)),
        'INVALID_SNAPSHOT_ID',
        bad,
      );
    }
  });

  it('integers in paths, headers and queries are strict decimal', () => {
    assert.equal(parseStrictInt('0'), 0);
    assert.equal(parseStrictInt('2147483647'), 2147483647);
    for (const bad of ['', '-1', '1e3', '0x10', ' 1', '1.0', '2147483648', '+1']) assert.equal(parseStrictInt(bad), undefined, bad);
    assert.equal(
      reasonOf(() => validateBlockIndexText('abc')),
      'INVALID_PARAMETER_VALUE',
    );
  });

  it('block index must lie inside the volume', () => {
    checkBlockIndexInVolume(2047, 1);
    assert.equal(
      reasonOf(() => checkBlockIndexInVolume(2048, 1)),
      'INVALID_BLOCK',
    );
  });

  it('StartSnapshot: VolumeSize 1..65536', () => {
    assert.equal(validateStartSnapshot({ VolumeSize: 1 }).volumeSizeGiB, 1);
    assert.equal(validateStartSnapshot({ VolumeSize: 65536 }).volumeSizeGiB, 65536);
    for (const bad of [0, 65537, 1.5, '5', null])
      assert.equal(
        reasonOf(() => validateStartSnapshot({ VolumeSize: bad })),
        'INVALID_VOLUME_SIZE',
        String(bad),
      );
    assert.equal(
      reasonOf(() => validateStartSnapshot({})),
      'INVALID_VOLUME_SIZE',
    );
    assert.equal(
      reasonOf(() => validateStartSnapshot([])),
      'INVALID_PARAMETER_VALUE',
    );
  });

  it('StartSnapshot: Timeout 10..4320, default 60', () => {
    assert.equal(validateStartSnapshot({ VolumeSize: 1 }).timeoutMinutes, 60);
    assert.equal(validateStartSnapshot({ VolumeSize: 1, Timeout: 10 }).timeoutMinutes, 10);
    assert.equal(validateStartSnapshot({ VolumeSize: 1, Timeout: 4320 }).timeoutMinutes, 4320);
    for (const bad of [9, 4321, 60.5])
      assert.equal(
        reasonOf(() => validateStartSnapshot({ VolumeSize: 1, Timeout: bad })),
        'INVALID_PARAMETER_VALUE',
      );
  });

  it('StartSnapshot: tags', () => {
    assert.deepEqual(validateStartSnapshot({ VolumeSize: 1, Tags: [{ Key: 'k' }] }).tags, [{ Key: 'k', Value: '' }]);
    const tooMany = Array.from({ length: 51 }, (_, i) => ({ Key: `k${i}`, Value: 'v' }));
    for (const bad of [
      'x',
      [{ Key: '' }],
      [{ Value: 'v' }],
      [{ Key: 'k'.repeat(128) }],
      [{ Key: 'k', Value: 'v'.repeat(256) }],
      [{ Key: 'aws:reserved' }],
      [{ Key: 'k' }, { Key: 'k' }],
      tooMany,
    ]) {
      assert.equal(
        reasonOf(() => validateStartSnapshot({ VolumeSize: 1, Tags: bad })),
        'INVALID_TAG',
        JSON.stringify(bad).slice(0, 60),
      );
    }
  });

  it('StartSnapshot: Description, ClientToken, KmsKeyArn, ParentSnapshotId', () => {
    assert.equal(
      reasonOf(() => validateStartSnapshot({ VolumeSize: 1, Description: '' })),
      'INVALID_PARAMETER_VALUE',
    );
    assert.equal(
      reasonOf(() => validateStartSnapshot({ VolumeSize: 1, Description: 'd'.repeat(256) })),
      'INVALID_PARAMETER_VALUE',
    );
    assert.equal(validateStartSnapshot({ VolumeSize: 1, Description: 'd'.repeat(255) }).description?.length, 255);
    assert.equal(
      reasonOf(() => validateStartSnapshot({ VolumeSize: 1, ClientToken: 'has space' })),
      'INVALID_PARAMETER_VALUE',
    );
    assert.equal(
      reasonOf(() => validateStartSnapshot({ VolumeSize: 1, ClientToken: 't'.repeat(256) })),
      'INVALID_PARAMETER_VALUE',
    );
    const arn = 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab';
    assert.equal(validateStartSnapshot({ VolumeSize: 1, Encrypted: true, KmsKeyArn: arn }).kmsKeyArn, arn);
    assert.equal(
      reasonOf(() => validateStartSnapshot({ VolumeSize: 1, KmsKeyArn: 'arn:aws:kms:us-east-1:1234:key/x' })),
      'INVALID_CUSTOMER_KEY',
    );
    assert.equal(
      reasonOf(() => validateStartSnapshot({ VolumeSize: 1, ParentSnapshotId: 'snap-XYZ' })),
      'INVALID_SNAPSHOT_ID',
    );
    assert.equal(
      reasonOf(() => validateStartSnapshot({ VolumeSize: 1, Encrypted: 'yes' })),
      'INVALID_PARAMETER_VALUE',
    );
  });

  it('StartSnapshot: Encrypted together with ParentSnapshotId is refused', () => {
    assert.equal(
      reasonOf(() => validateStartSnapshot({ VolumeSize: 1, ParentSnapshotId: 'snap-0123', Encrypted: true })),
      'INVALID_PARAMETER_VALUE',
    );
    assert.equal(validateStartSnapshot({ VolumeSize: 1, ParentSnapshotId: 'snap-0123' }).parentSnapshotId, 'snap-0123');
  });

  it('PutSnapshotBlock headers: DataLength 524288, checksum, algorithm, progress', () => {
    const good = { 'x-amz-data-length': '524288', 'x-amz-checksum': GOOD_CHECKSUM, 'x-amz-checksum-algorithm': 'SHA256' };
    assert.deepEqual(validatePutHeaders(headers(good)), { dataLengthBytes: 524288, checksumBase64: GOOD_CHECKSUM });
    assert.equal(validatePutHeaders(headers({ ...good, 'x-amz-progress': '100' })).progressPercent, 100);
    const cases: Array<Record<string, string | undefined>> = [
      { 'x-amz-data-length': undefined },
      { 'x-amz-data-length': '1000' },
      { 'x-amz-data-length': '524288.0' },
      { 'x-amz-checksum': undefined },
      { 'x-amz-checksum': 'not base64!' },
      { 'x-amz-checksum': 'A'.repeat(65) },
      { 'x-amz-checksum-algorithm': undefined },
      { 'x-amz-checksum-algorithm': 'MD5' },
      { 'x-amz-progress': '101' },
      { 'x-amz-progress': '-1' },
    ];
    for (const change of cases) {
      const values = { ...good, ...change };
      for (const key of Object.keys(values))
        if (values[key as keyof typeof values] === undefined) delete values[key as keyof typeof values];
      assert.equal(
        reasonOf(() => validatePutHeaders(headers(values as Record<string, string>))),
        'INVALID_PARAMETER_VALUE',
        JSON.stringify(change),
      );
    }
  });

  it('CompleteSnapshot headers: ChangedBlocksCount required, LINEAR only with SHA256', () => {
    assert.deepEqual(validateCompleteHeaders(headers({ 'x-amz-changedblockscount': '0' })), { changedBlocksCount: 0 });
    const full = {
      'x-amz-changedblockscount': '2',
      'x-amz-checksum': GOOD_CHECKSUM,
      'x-amz-checksum-algorithm': 'SHA256',
      'x-amz-checksum-aggregation-method': 'LINEAR',
    };
    assert.deepEqual(validateCompleteHeaders(headers(full)), { changedBlocksCount: 2, checksumBase64: GOOD_CHECKSUM });
    assert.equal(
      reasonOf(() => validateCompleteHeaders(headers({}))),
      'INVALID_PARAMETER_VALUE',
    );
    assert.equal(
      reasonOf(() => validateCompleteHeaders(headers({ 'x-amz-changedblockscount': '-1' }))),
      'INVALID_PARAMETER_VALUE',
    );
    assert.equal(
      reasonOf(() => validateCompleteHeaders(headers({ ...full, 'x-amz-checksum-aggregation-method': 'TREE' }))),
      'INVALID_PARAMETER_VALUE',
    );
    assert.equal(
      reasonOf(() => validateCompleteHeaders(headers({ ...full, 'x-amz-checksum-algorithm': 'SHA1' }))),
      'INVALID_PARAMETER_VALUE',
    );
    const { 'x-amz-checksum-aggregation-method': _method, ...noMethod } = full;
    assert.equal(
      reasonOf(() => validateCompleteHeaders(headers(noMethod))),
      'INVALID_PARAMETER_VALUE',
    );
  });

  it('pages: MaxResults 100..10000, StartingBlockIndex, page token charset', () => {
    assert.deepEqual(validatePage(new Map()), { maxResults: 10000, startingBlockIndex: 0 });
    assert.deepEqual(
      validatePage(
        new Map([
          ['maxResults', '100'],
          ['startingBlockIndex', '7'],
        ]),
      ),
      { maxResults: 100, startingBlockIndex: 7 },
    );
    for (const bad of ['99', '10001', 'x'])
      assert.equal(
        reasonOf(() => validatePage(new Map([['maxResults', bad]]))),
        'INVALID_PARAMETER_VALUE',
      );
    assert.equal(
      reasonOf(() => validatePage(new Map([['startingBlockIndex', '-5']]))),
      'INVALID_PARAMETER_VALUE',
    );
    assert.equal(
      reasonOf(() => validatePage(new Map([['pageToken', 'bad token']]))),
      'INVALID_PAGE_TOKEN',
    );
    assert.equal(
      reasonOf(() => validatePage(new Map([['pageToken', 'A'.repeat(257)]]))),
      'INVALID_PAGE_TOKEN',
    );
    assert.equal(
      reasonOf(() => validateBlockToken(undefined)),
      'INVALID_BLOCK_TOKEN',
    );
    assert.equal(
      reasonOf(() => validateBlockToken('a b')),
      'INVALID_BLOCK_TOKEN',
    );
  });
});
