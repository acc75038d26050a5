"""Drives every EBS direct API operation against local-ebs with boto3 and prints
what it observed as one JSON object on stdout; test/local-ebs/conformance.test.ts
asserts on it. Usage: python3 boto3_conformance.py ENDPOINT BIG_SNAPSHOT_ID
Credentials and region come from the environment the test sets."""
import base64
import hashlib
import json
import os
import sys
import uuid

import boto3
import botocore.config
from botocore.exceptions import ClientError

BLOCK = 524288
CLIENT = "boto3"


def pattern(label):
    unit = (label + "|").encode("ascii")
    return (unit * (BLOCK // len(unit) + 1))[:BLOCK]


def checksum(data):
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def linear(datas):
    return base64.b64encode(hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in datas)).digest()).decode("ascii")


def make_client(endpoint, secret=None):
    return boto3.client(
        "ebs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or os.environ["AWS_SECRET_ACCESS_KEY"],
        config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


def error_of(call):
    try:
        call()
    except ClientError as e:
        response = e.response
        return {
            "code": response["Error"]["Code"],
            "reason": response.get("Reason", response["Error"].get("Reason")),
            "status": response["ResponseMetadata"]["HTTPStatusCode"],
            "message": response["Error"].get("Message"),
        }
    return {"code": None}


def list_all(call, key, **kwargs):
    """Pages through with NextToken; returns (page sizes, entries)."""
    pages, entries, token = [], [], None
    while True:
        args = dict(kwargs)
        if token:
            args["NextToken"] = token
        page = call(**args)
        pages.append(len(page[key]))
        entries.extend(page[key])
        token = page.get("NextToken")
        if not token or len(pages) > 100:
            return pages, entries


def main():
    endpoint, big_id = sys.argv[1], sys.argv[2]
    ebs = make_client(endpoint)
    out = {}

    token = "tok-%s-%s" % (CLIENT, uuid.uuid4())
    start_args = dict(VolumeSize=1, Description="conformance " + CLIENT, Tags=[{"Key": "client", "Value": CLIENT}], ClientToken=token, Timeout=60)
    started = ebs.start_snapshot(**start_args)
    parent = started["SnapshotId"]
    out["parentId"] = parent
    out["start"] = {"status": started["Status"], "blockSize": started["BlockSize"], "volumeSize": started["VolumeSize"], "httpStatus": started["ResponseMetadata"]["HTTPStatusCode"]}
    out["retrySameId"] = ebs.start_snapshot(**start_args)["SnapshotId"] == parent
    out["conflict"] = error_of(lambda: ebs.start_snapshot(**dict(start_args, VolumeSize=2)))

    blocks = {0: pattern(CLIENT + "-parent-0"), 5: pattern(CLIENT + "-parent-5")}
    put = None
    for index, data in blocks.items():
        put = ebs.put_snapshot_block(SnapshotId=parent, BlockIndex=index, BlockData=data, DataLength=BLOCK, Checksum=checksum(data), ChecksumAlgorithm="SHA256")
    out["put"] = {"httpStatus": put["ResponseMetadata"]["HTTPStatusCode"], "checksum": put["Checksum"], "expected": checksum(blocks[5])}
    out["badChecksum"] = error_of(lambda: ebs.put_snapshot_block(SnapshotId=parent, BlockIndex=1, BlockData=blocks[0], DataLength=BLOCK, Checksum=checksum(blocks[5]), ChecksumAlgorithm="SHA256"))
    out["badDataLength"] = error_of(lambda: ebs.put_snapshot_block(SnapshotId=parent, BlockIndex=1, BlockData=blocks[0], DataLength=1000, Checksum=checksum(blocks[0]), ChecksumAlgorithm="SHA256"))
    out["readWhilePending"] = error_of(lambda: ebs.list_snapshot_blocks(SnapshotId=parent))
    out["unknownSnapshot"] = error_of(lambda: ebs.list_snapshot_blocks(SnapshotId="snap-0123456789abcdef0"))
    completed = ebs.complete_snapshot(SnapshotId=parent, ChangedBlocksCount=2, Checksum=linear([blocks[0], blocks[5]]), ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    out["complete"] = {"status": completed["Status"], "httpStatus": completed["ResponseMetadata"]["HTTPStatusCode"]}
    out["writeAfterComplete"] = error_of(lambda: ebs.put_snapshot_block(SnapshotId=parent, BlockIndex=2, BlockData=blocks[0], DataLength=BLOCK, Checksum=checksum(blocks[0]), ChecksumAlgorithm="SHA256"))

    child_started = ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent)
    child = child_started["SnapshotId"]
    out["childId"] = child
    out["childParent"] = child_started.get("ParentSnapshotId")
    child_blocks = {5: pattern(CLIENT + "-child-5"), 7: pattern(CLIENT + "-child-7")}
    for index, data in child_blocks.items():
        ebs.put_snapshot_block(SnapshotId=child, BlockIndex=index, BlockData=data, DataLength=BLOCK, Checksum=checksum(data), ChecksumAlgorithm="SHA256")
    out["childComplete"] = ebs.complete_snapshot(SnapshotId=child, ChangedBlocksCount=2)["Status"]
    listed = ebs.list_snapshot_blocks(SnapshotId=child)
    out["childBlocks"] = [b["BlockIndex"] for b in listed["Blocks"]]
    tokens = {b["BlockIndex"]: b["BlockToken"] for b in listed["Blocks"]}
    reads = {}
    for index in (0, 5):
        got = ebs.get_snapshot_block(SnapshotId=child, BlockIndex=index, BlockToken=tokens[index])
        data = got["BlockData"].read()
        reads[str(index)] = {"sha": checksum(data), "headerChecksum": got["Checksum"], "dataLength": got["DataLength"]}
    out["childReads"] = reads
    changed = ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child)
    out["changed"] = [{"index": c["BlockIndex"], "first": "FirstBlockToken" in c, "second": "SecondBlockToken" in c} for c in changed["ChangedBlocks"]]
    own = ebs.list_changed_blocks(SecondSnapshotId=child)
    out["changedNoFirst"] = [c["BlockIndex"] for c in own["ChangedBlocks"]]
    out["invalidBlockToken"] = error_of(lambda: ebs.get_snapshot_block(SnapshotId=child, BlockIndex=5, BlockToken=tokens[0]))

    pages, entries = list_all(ebs.list_snapshot_blocks, "Blocks", SnapshotId=big_id, MaxResults=100)
    out["bigPages"] = pages
    out["bigIndexes"] = [b["BlockIndex"] for b in entries]
    pages, entries = list_all(ebs.list_changed_blocks, "ChangedBlocks", SecondSnapshotId=big_id, MaxResults=100)
    out["bigChangedPages"] = pages
    out["bigChangedIndexes"] = [c["BlockIndex"] for c in entries]
    first_page = ebs.list_snapshot_blocks(SnapshotId=big_id, MaxResults=100)
    last = first_page["Blocks"][-1]
    got = ebs.get_snapshot_block(SnapshotId=big_id, BlockIndex=last["BlockIndex"], BlockToken=last["BlockToken"])
    out["bigRead"] = {"index": last["BlockIndex"], "sha": checksum(got["BlockData"].read())}
    out["invalidPageToken"] = error_of(lambda: ebs.list_snapshot_blocks(SnapshotId=child, NextToken=first_page["NextToken"]))
    out["unrelated"] = error_of(lambda: ebs.list_changed_blocks(FirstSnapshotId=big_id, SecondSnapshotId=child))
    out["badSignature"] = error_of(lambda: make_client(endpoint, secret="wrong-secret").list_snapshot_blocks(SnapshotId=child))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
