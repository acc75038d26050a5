// The signed PUT's error answers read as the SDK's restJson1 deserializer reads
// them (ebs-direct-api.md §5.1), so that classify.ts gives both paths one
// verdict. Error shapes local-ebs never sends are covered here; the signed PUT
// itself is tested against local-ebs in aws-client.test.ts.
import assert from 'node:assert/strict';
import { classifyEbsError } from '../../src/ebs/classify';
import { hostOf, serviceError } from '../../src/ebs/signed-put';

describe('signed PUT: error answers in the SDK shape', () => {
  it('takes the name from x-amzn-ErrorType, less a :suffix and a namespace# prefix, and keeps Reason', () => {
    const error = serviceError(
      400,
      { 'x-amzn-errortype': 'com.amazon.coral#ValidationException:http://internal.amazon.com/coral/', 'x-amzn-requestid': 'req-1' },
      '{"Message":"Block index out of range","Reason":"INVALID_BLOCK"}',
    );
    assert.equal(error.name, 'ValidationException');
    assert.equal(error.message, 'Block index out of range');
    assert.equal(error.$fault, 'client');
    assert.equal(error.$metadata.httpStatusCode, 400);
    assert.equal(error.$metadata.requestId, 'req-1');
    const classified = classifyEbsError(error);
    assert.deepEqual([classified.code, classified.kind, classified.reason], ['ValidationException', 'permanent', 'INVALID_BLOCK']);
  });

  it('falls back to the body: code in any case, then __type', () => {
    assert.equal(serviceError(400, {}, '{"Code":"RequestThrottledException","message":"slow down"}').name, 'RequestThrottledException');
    assert.equal(serviceError(400, {}, '{"__type":"aws#ThrottlingException"}').name, 'ThrottlingException');
    assert.equal(classifyEbsError(serviceError(400, {}, '{"__type":"ThrottlingException"}')).kind, 'throttled');
  });

  it('a 5xx with a body that is not JSON is a transient server fault quoting the body', () => {
    const error = serviceError(502, {}, '<html>Bad Gateway</html>');
    assert.equal(error.name, 'UnknownError');
    assert.equal(error.$fault, 'server');
    const classified = classifyEbsError(error);
    assert.equal(classified.kind, 'transient');
    assert.match(classified.detail, /HTTP 502.*Bad Gateway/);
  });

  it('an empty error body still names the status', () => {
    const error = serviceError(403, { 'x-amzn-errortype': 'AccessDeniedException' }, '');
    assert.equal(error.message, 'HTTP 403');
    assert.equal(classifyEbsError(error).kind, 'permanent');
  });

  it('writes the Host header with the port, and an IPv6 address in brackets', () => {
    assert.equal(hostOf({ protocol: 'https:', hostname: 'ebs.us-east-1.amazonaws.com', basePath: '' }), 'ebs.us-east-1.amazonaws.com');
    assert.equal(hostOf({ protocol: 'http:', hostname: '127.0.0.1', port: 8080, basePath: '' }), '127.0.0.1:8080');
    assert.equal(hostOf({ protocol: 'http:', hostname: '::1', port: 8080, basePath: '' }), '[::1]:8080');
  });
});
