// The verifier against an independent signer (@smithy/signature-v4, which the JS
// SDK uses): good requests verify, and each way of getting it wrong is refused with
// the name AWS uses.
import assert from 'node:assert/strict';
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256 } from '../../src/ebs/checksum';
import { EbsApiError } from '../../src/local-ebs/errors';
import { SigV4Verifier, UNSIGNED_PAYLOAD, canonicalQuery, type SignedRequest } from '../../src/local-ebs/sigv4';
import { createHash } from 'node:crypto';

const CREDENTIALS = { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY' };
const HOST = '127.0.0.1:8455';
const EMPTY_SHA256 = createHash('sha256').update('').digest('hex');

interface ToSign {
  method: string;
  path: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Buffer | string;
  signingDate?: Date;
  service?: string;
  credentials?: typeof CREDENTIALS;
}

function encodeQuery(query: Record<string, string>): string {
  // What the SDK's HTTP handler puts on the wire: RFC 3986 escapes (+ / = become %2B %2F %3D).
  const escape = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  return Object.entries(query)
    .map(([k, v]) => `${escape(k)}=${escape(v)}`)
    .join('&');
}

async function sign(request: ToSign): Promise<SignedRequest> {
  const signer = new SignatureV4({
    credentials: request.credentials ?? CREDENTIALS,
    region: 'eu-west-1',
    service: request.service ?? 'ebs',
    sha256: Sha256,
  });
  const signed = await signer.sign(
    {
      method: request.method,
      protocol: 'http:',
      hostname: '127.0.0.1',
      port: 8455,
      path: request.path,
      query: request.query ?? {},
      headers: { host: HOST, ...request.headers },
      body: request.body,
    },
    request.signingDate ? { signingDate: request.signingDate } : {},
  );
  const headers = new Map<string, string>();
  for (const [name, value] of Object.entries(signed.headers)) headers.set(name.toLowerCase(), value);
  return { method: request.method, rawPath: request.path, rawQuery: encodeQuery(request.query ?? {}), headers };
}

function payloadHashOf(request: SignedRequest): string {
  return request.headers.get('x-amz-content-sha256') ?? EMPTY_SHA256;
}

function refusal(verify: () => void): EbsApiError {
  try {
    verify();
  } catch (error) {
    assert.ok(error instanceof EbsApiError);
    assert.equal(error.httpStatus, 403);
    return error;
  }
  assert.fail('expected a 403');
}

describe('local-ebs SigV4 verification', () => {
  const verifier = new SigV4Verifier(CREDENTIALS);

  it('accepts a GET with a query whose token holds + / =', async () => {
    const request = await sign({ method: 'GET', path: '/snapshots/snap-0abc/blocks/5', query: { blockToken: 'ab+c/d==' } });
    assert.match(request.rawQuery, /%2B/);
    verifier.verify(request, payloadHashOf(request), Date.now());
  });

  it('canonicalises the query by decoding, without turning + into a space', () => {
    assert.equal(canonicalQuery('b=2&a=x%2By'), 'a=x%2By&b=2');
    assert.equal(canonicalQuery('a=x+y'), 'a=x%2By');
    assert.equal(canonicalQuery('a=x%20y'), 'a=x%20y');
  });

  it('accepts a PUT signed with UNSIGNED-PAYLOAD and one signed with the body hash', async () => {
    const body = Buffer.alloc(1024, 7);
    const unsigned = await sign({
      method: 'PUT',
      path: '/snapshots/snap-0abc/blocks/0',
      headers: { 'x-amz-content-sha256': UNSIGNED_PAYLOAD, 'x-amz-checksum': 'abc=' },
      body,
    });
    verifier.verify(unsigned, UNSIGNED_PAYLOAD, Date.now());
    const hashed = await sign({ method: 'PUT', path: '/snapshots/snap-0abc/blocks/0', body });
    assert.equal(hashed.headers.get('x-amz-content-sha256'), createHash('sha256').update(body).digest('hex'));
    verifier.verify(hashed, payloadHashOf(hashed), Date.now());
  });

  it('refuses a request with no Authorization: MissingAuthenticationTokenException', async () => {
    const request = await sign({ method: 'GET', path: '/snapshots/snap-0abc/blocks' });
    const headers = new Map(request.headers);
    headers.delete('authorization');
    assert.equal(
      refusal(() => verifier.verify({ ...request, headers }, EMPTY_SHA256, Date.now())).code,
      'MissingAuthenticationTokenException',
    );
  });

  it('refuses a wrong secret key: InvalidSignatureException', async () => {
    const request = await sign({
      method: 'GET',
      path: '/snapshots/snap-0abc/blocks',
      credentials: { ...CREDENTIALS, secretAccessKey: 'other' },
    });
    const error = refusal(() => verifier.verify(request, payloadHashOf(request), Date.now()));
    assert.equal(error.code, 'InvalidSignatureException');
    assert.match(error.message, /does not match/);
  });

  it('refuses an unknown access key ID: UnrecognizedClientException', async () => {
    const request = await sign({
      method: 'GET',
      path: '/snapshots/snap-0abc/blocks',
      credentials: { ...CREDENTIALS, accessKeyId: 'AKIDOTHER' },
    });
    assert.equal(refusal(() => verifier.verify(request, payloadHashOf(request), Date.now())).code, 'UnrecognizedClientException');
  });

  it('refuses a signature dated more than 15 minutes away: InvalidSignatureException', async () => {
    const old = await sign({ method: 'GET', path: '/snapshots/snap-0abc/blocks', signingDate: new Date(Date.now() - 16 * 60_000) });
    const expired = refusal(() => verifier.verify(old, payloadHashOf(old), Date.now()));
    assert.equal(expired.code, 'InvalidSignatureException');
    assert.match(expired.message, /Signature expired/);
    const future = await sign({ method: 'GET', path: '/snapshots/snap-0abc/blocks', signingDate: new Date(Date.now() + 16 * 60_000) });
    assert.match(refusal(() => verifier.verify(future, payloadHashOf(future), Date.now())).message, /not yet current/);
    const recent = await sign({ method: 'GET', path: '/snapshots/snap-0abc/blocks', signingDate: new Date(Date.now() - 14 * 60_000) });
    verifier.verify(recent, payloadHashOf(recent), Date.now());
  });

  it('refuses a credential scoped to another service', async () => {
    const request = await sign({ method: 'GET', path: '/snapshots/snap-0abc/blocks', service: 's3' });
    assert.equal(refusal(() => verifier.verify(request, payloadHashOf(request), Date.now())).code, 'InvalidSignatureException');
  });

  it('refuses a request changed after signing: header, path, query, payload hash', async () => {
    const request = await sign({
      method: 'PUT',
      path: '/snapshots/snap-0abc/blocks/1',
      headers: { 'x-amz-checksum': 'abc=', 'x-amz-content-sha256': UNSIGNED_PAYLOAD },
    });
    const changedHeader = new Map(request.headers).set('x-amz-checksum', 'abd=');
    assert.equal(
      refusal(() => verifier.verify({ ...request, headers: changedHeader }, UNSIGNED_PAYLOAD, Date.now())).code,
      'InvalidSignatureException',
    );
    assert.equal(
      refusal(() => verifier.verify({ ...request, rawPath: '/snapshots/snap-0abc/blocks/2' }, UNSIGNED_PAYLOAD, Date.now())).code,
      'InvalidSignatureException',
    );
    assert.equal(
      refusal(() => verifier.verify({ ...request, rawQuery: 'x=1' }, UNSIGNED_PAYLOAD, Date.now())).code,
      'InvalidSignatureException',
    );
    assert.equal(refusal(() => verifier.verify(request, EMPTY_SHA256, Date.now())).code, 'InvalidSignatureException');
  });

  it('refuses an x-amz-* header left out of the signature', async () => {
    const request = await sign({
      method: 'PUT',
      path: '/snapshots/snap-0abc/blocks/1',
      headers: { 'x-amz-content-sha256': UNSIGNED_PAYLOAD },
    });
    const headers = new Map(request.headers).set('x-amz-checksum', 'abc=');
    const error = refusal(() => verifier.verify({ ...request, headers }, UNSIGNED_PAYLOAD, Date.now()));
    assert.match(error.message, /x-amz-checksum/);
  });

  it('refuses a malformed Authorization header: IncompleteSignatureException', async () => {
    const request = await sign({ method: 'GET', path: '/snapshots/snap-0abc/blocks' });
    const headers = new Map(request.headers).set('authorization', 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE');
    assert.equal(refusal(() => verifier.verify({ ...request, headers }, EMPTY_SHA256, Date.now())).code, 'IncompleteSignatureException');
  });
});
