"""A benchmark baseline, not part of ebs-fuse: the simplest uploader of an image
to a new snapshot, in the style of flexible-snapshot-proxy. Python with Debian's
python3-boto3, a ThreadPoolExecutor of 16 threads, SHA-256 per block,
put_snapshot_block, and complete_snapshot with the LINEAR checksum.
Usage: /usr/bin/python3 boto3_peer.py IMAGE ENDPOINT; prints the snapshot ID.
Credentials and region come from the environment."""
import base64
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.config

BLOCK = 524288
THREADS = 16


def main():
    image, endpoint = sys.argv[1], sys.argv[2]
    size = os.path.getsize(image)
    blocks = -(-size // BLOCK)
    config = botocore.config.Config(max_pool_connections=THREADS, retries={"max_attempts": 10, "mode": "standard"})
    # Debian's botocore reads AWS_DEFAULT_REGION only; the bench sets AWS_REGION.
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    ebs = boto3.client("ebs", endpoint_url=endpoint, region_name=region, config=config)
    snapshot_id = ebs.start_snapshot(VolumeSize=max(1, -(-size // 2**30)))["SnapshotId"]

    def put(index):
        with open(image, "rb") as f:
            f.seek(index * BLOCK)
            data = f.read(BLOCK)
        data += b"\0" * (BLOCK - len(data))
        if data.count(0) == BLOCK:
            return None
        digest = hashlib.sha256(data).digest()
        ebs.put_snapshot_block(
            SnapshotId=snapshot_id,
            BlockIndex=index,
            BlockData=data,
            DataLength=BLOCK,
            Checksum=base64.b64encode(digest).decode("ascii"),
            ChecksumAlgorithm="SHA256",
        )
        return index, digest

    with ThreadPoolExecutor(THREADS) as pool:
        written = sorted(result for result in pool.map(put, range(blocks)) if result)
    linear = base64.b64encode(hashlib.sha256(b"".join(digest for _, digest in written)).digest()).decode("ascii")
    ebs.complete_snapshot(
        SnapshotId=snapshot_id,
        ChangedBlocksCount=len(written),
        Checksum=linear,
        ChecksumAlgorithm="SHA256",
        ChecksumAggregationMethod="LINEAR",
    )
    print(snapshot_id)


if __name__ == "__main__":
    main()
