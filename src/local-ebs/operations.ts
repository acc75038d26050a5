// What each EBS operation does with a request that passed routing, its body cap,
// SigV4 and the fault draw: validation of its labels, query and headers, the
// service call, and the answer. The per-operation faults (the PUT rate limit,
// corrupted reads) are applied here, where the operation's own inputs are known.
import type { Body, Reply } from './http';
import { decodeLabel, jsonReply } from './http';
import { requestThrottled, validationError } from './errors';
import type { FaultInjector, OperationName } from './faults';
import type { EbsService } from './service';
import {
  validateBlockIndexText,
  validateBlockToken,
  validateCompleteHeaders,
  validatePage,
  validatePutHeaders,
  validateSnapshotId,
  validateStartSnapshot,
} from './validation';

/** One request, as the operation sees it. */
export interface OperationContext {
  operation: OperationName;
  /** The route's labels: the snapshot ID, and the block index where there is one. */
  labels: string[];
  query: Map<string, string>;
  headers: Map<string, string>;
  body: Body;
  service: EbsService;
  faults: FaultInjector;
  /** The server's counters, faults by kind. */
  stats: { faultsInjected: Record<string, number> };
}

/** Adds one to a counter of the server's stats. */
export function increment(counter: Record<string, number>, key: string): void {
  counter[key] = (counter[key] ?? 0) + 1;
}

/** The answer of one operation; an EbsApiError for a refused request. */
export async function runOperation({ operation, labels, query, headers, body, service, faults, stats }: OperationContext): Promise<Reply> {
  const faultsInjected = stats.faultsInjected;
  const header = (name: string): string | undefined => headers.get(name);
  switch (operation) {
    case 'StartSnapshot': {
      let parsed: unknown;
      try {
        parsed = body.data.length === 0 ? {} : JSON.parse(body.data.toString('utf8'));
      } catch {
        throw validationError('INVALID_PARAMETER_VALUE', 'The request body is not valid JSON.');
      }
      return jsonReply(201, await service.startSnapshot(validateStartSnapshot(parsed)));
    }
    case 'PutSnapshotBlock': {
      const snapshotId = validateSnapshotId(decodeLabel(labels[0]));
      const blockIndex = validateBlockIndexText(decodeLabel(labels[1]));
      if (faults.overRate(snapshotId)) {
        increment(faultsInjected, 'rate');
        throw requestThrottled(
          'RESOURCE_LEVEL_THROTTLE',
          `The request was throttled: more than ${faults.spec.putsPerSecondPerSnapshot} PutSnapshotBlock requests per second for snapshot '${snapshotId}'.`,
        );
      }
      const putHeaders = validatePutHeaders(header);
      await service.checkPutTarget(snapshotId, blockIndex);
      if (body.data.length !== putHeaders.dataLengthBytes) {
        // AWS's words for a body shorter or longer than DataLength.
        throw validationError('INVALID_PARAMETER_VALUE', 'Failed to read block data');
      }
      const digest = body.digest!;
      if (digest.toString('base64') !== putHeaders.checksumBase64) {
        throw validationError('INVALID_PARAMETER_VALUE', 'The x-amz-Checksum does not match the SHA-256 of the block data.');
      }
      await service.putSnapshotBlock(snapshotId, blockIndex, digest, body.data);
      return jsonReply(201, {}, { 'x-amz-Checksum': putHeaders.checksumBase64, 'x-amz-Checksum-Algorithm': 'SHA256' });
    }
    case 'CompleteSnapshot': {
      const snapshotId = validateSnapshotId(decodeLabel(labels[0]));
      const input = validateCompleteHeaders(header);
      return jsonReply(202, { Status: await service.completeSnapshot(snapshotId, input) });
    }
    case 'GetSnapshotBlock': {
      const snapshotId = validateSnapshotId(decodeLabel(labels[0]));
      const blockIndex = validateBlockIndexText(decodeLabel(labels[1]));
      const token = validateBlockToken(query.get('blockToken'));
      const block = await service.getSnapshotBlock(snapshotId, blockIndex, token);
      let data = block.data;
      if (faults.shouldCorrupt(operation)) {
        increment(faultsInjected, 'corrupt');
        data = Buffer.from(data);
        data[0] ^= 0xff;
      }
      return {
        status: 200,
        headers: {
          'Content-Type': 'application/octet-stream',
          'x-amz-Data-Length': data.length,
          'x-amz-Checksum': block.digest.toString('base64'),
          'x-amz-Checksum-Algorithm': 'SHA256',
        },
        body: data,
      };
    }
    case 'ListSnapshotBlocks': {
      const snapshotId = validateSnapshotId(decodeLabel(labels[0]));
      return jsonReply(200, await service.listSnapshotBlocks(snapshotId, validatePage(query)));
    }
    case 'ListChangedBlocks': {
      const secondId = validateSnapshotId(decodeLabel(labels[0]), 'SecondSnapshotId');
      const firstText = query.get('firstSnapshotId');
      const firstId = firstText === undefined ? undefined : validateSnapshotId(firstText, 'FirstSnapshotId');
      return jsonReply(200, await service.listChangedBlocks(secondId, firstId, validatePage(query)));
    }
  }
}
