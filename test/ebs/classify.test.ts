// classifyEbsError on error shapes that local-ebs never sends (expired session
// tokens, 502/503 from a proxy, credential-chain and region failures). The
// shapes are the SDK's: a ServiceException carries name, $fault and
// $metadata.httpStatusCode; network errors carry a Node errno code. The
// errors local-ebs can produce are covered end to end in aws-client.test.ts.
import assert from 'node:assert/strict';
import { classifyEbsError } from '../../src/ebs/classify';

function serviceError(name: string, httpStatus: number, message: string, extra: Record<string, unknown> = {}): Error {
  return Object.assign(new Error(message), {
    name,
    $fault: httpStatus >= 500 ? 'server' : 'client',
    $metadata: { httpStatusCode: httpStatus },
    ...extra,
  });
}

function networkError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

describe('classifyEbsError', () => {
  const cases: Array<[string, Error, 'transient' | 'throttled' | 'permanent', RegExp?]> = [
    ['502 from a proxy', serviceError('Unknown', 502, 'Bad Gateway'), 'transient'],
    ['503 ServiceUnavailable', serviceError('ServiceUnavailable', 503, 'try later'), 'transient'],
    ['429 with an unknown name', serviceError('Unknown', 429, 'slow'), 'throttled'],
    [
      'ExpiredTokenException',
      serviceError('ExpiredTokenException', 400, 'The security token included in the request is expired'),
      'permanent',
      /refresh the credentials/,
    ],
    [
      'ConcurrentLimitExceededException',
      serviceError('ConcurrentLimitExceededException', 400, 'too many'),
      'permanent',
      /too many snapshots/,
    ],
    [
      'ServiceQuotaExceededException',
      serviceError('ServiceQuotaExceededException', 402, 'quota', { Reason: 'DEPENDENCY_SERVICE_QUOTA_EXCEEDED' }),
      'permanent',
      /HTTP 402, DEPENDENCY_SERVICE_QUOTA_EXCEEDED/,
    ],
    ['EHOSTUNREACH', networkError('EHOSTUNREACH', 'connect EHOSTUNREACH 10.0.0.1:443'), 'transient', /network is unreachable/],
    ['EAI_AGAIN', networkError('EAI_AGAIN', 'getaddrinfo EAI_AGAIN ebs.example'), 'transient', /resolve the host name/],
    [
      'an errno code on the cause',
      Object.assign(new Error('fetch failed'), { cause: networkError('ECONNRESET', 'read ECONNRESET') }),
      'transient',
    ],
    ['socket hang up', new Error('socket hang up'), 'transient'],
    ['a TimeoutError', Object.assign(new Error('socket timed out'), { name: 'TimeoutError' }), 'transient'],
    [
      'no credentials',
      Object.assign(new Error('Could not load credentials from any providers'), { name: 'CredentialsProviderError' }),
      'permanent',
      /no AWS credentials found.*AWS_ACCESS_KEY_ID/,
    ],
    ['no region', new Error('Region is missing'), 'permanent', /pass --region/],
    ['an unknown error', new TypeError('Expected real number'), 'permanent'],
  ];
  for (const [label, error, kind, pattern] of cases) {
    it(`${label}: ${kind}`, () => {
      const classified = classifyEbsError(error);
      assert.equal(classified.kind, kind);
      if (pattern) assert.match(classified.detail, pattern);
      assert.ok(!classified.detail.includes('\n'));
    });
  }

  it('ResourceNotFound is transient only inside the window after StartSnapshot', () => {
    const error = serviceError('ResourceNotFoundException', 404, "The snapshot 'snap-1' does not exist.", { Reason: 'SNAPSHOT_NOT_FOUND' });
    assert.equal(classifyEbsError(error, { resourceNotFoundIsTransient: true }).kind, 'transient');
    assert.equal(classifyEbsError(error, { resourceNotFoundIsTransient: false }).kind, 'permanent');
  });

  it('our own attempt timeout wins over whatever the aborted request threw', () => {
    const aborted = Object.assign(new Error('Request aborted'), { name: 'AbortError' });
    const classified = classifyEbsError(aborted, { timedOutAfterMs: 1234 });
    assert.equal(classified.kind, 'transient');
    assert.equal(classified.code, 'RequestTimeout');
    assert.match(classified.detail, /1234 ms/);
  });

  it('names the missing profile', () => {
    const error = Object.assign(new Error('Could not load credentials from any providers'), { name: 'CredentialsProviderError' });
    assert.match(classifyEbsError(error, { profile: 'work' }).detail, /profile "work"/);
  });

  it('a service message is quoted on one line, bounded in length', () => {
    const long = `line one\nline two ${'x'.repeat(1000)}`;
    const { detail } = classifyEbsError(serviceError('ValidationException', 400, long));
    assert.ok(!detail.includes('\n'));
    assert.ok(detail.length < 500, `${detail.length} chars`);
  });
});
