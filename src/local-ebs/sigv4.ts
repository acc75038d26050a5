// Verification of AWS Signature Version 4 (header form) for the `ebs` service,
// against the one key pair the server is configured with. The canonical request
// is rebuilt the way @smithy/signature-v4 and botocore build it, so that any
// correctly signing client verifies: path segments escaped again (the path on the
// wire is already escaped once), query pairs decoded then re-encoded with RFC 3986
// rules and sorted, header values trimmed with inner whitespace collapsed.
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { authError } from './errors';

export interface SigV4Credentials {
  accessKeyId: string;
  secretAccessKey: string;
}

export interface SignedRequest {
  method: string;
  /** The path exactly as on the request line, without the query. */
  rawPath: string;
  /** The query string exactly as on the request line, without the `?`. */
  rawQuery: string;
  /** Lower-case header name to its value; repeated headers joined with ','. */
  headers: ReadonlyMap<string, string>;
}

/** What a verified signature tells about the request. */
export interface VerifiedRequest {
  /** The region of the credential scope. */
  region: string;
}

export const SIGNING_SERVICE = 'ebs';
export const UNSIGNED_PAYLOAD = 'UNSIGNED-PAYLOAD';
/** AWS refuses a signature dated more than 15 minutes from its clock. */
export const CLOCK_SKEW_MAX_MS = 15 * 60 * 1000;
const ALGORITHM = 'AWS4-HMAC-SHA256';
const AMZ_DATE_PATTERN = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/;
const SIGNATURE_PATTERN = /^[0-9a-f]{64}$/;
const SIGNING_KEY_CACHE_MAX_ENTRIES = 32;

/** RFC 3986 unreserved characters stay, everything else is %XX (upper case). */
export function escapeRfc3986(text: string): string {
  return encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** Percent-decoding that leaves `+` alone (it is not a space in these URIs). */
export function percentDecode(text: string): string | undefined {
  try {
    return decodeURIComponent(text);
  } catch {
    return undefined;
  }
}

export function canonicalPath(rawPath: string): string {
  const segments: string[] = [];
  for (const segment of rawPath.split('/')) {
    if (segment === '' || segment === '.') continue;
    if (segment === '..') segments.pop();
    else segments.push(segment);
  }
  const joined = `${rawPath.startsWith('/') ? '/' : ''}${segments.join('/')}${segments.length > 0 && rawPath.endsWith('/') ? '/' : ''}`;
  return escapeRfc3986(joined).replace(/%2F/g, '/');
}

export function canonicalQuery(rawQuery: string): string {
  if (rawQuery === '') return '';
  const pairs: string[] = [];
  for (const part of rawQuery.split('&')) {
    if (part === '') continue;
    const equals = part.indexOf('=');
    const rawKey = equals < 0 ? part : part.slice(0, equals);
    const rawValue = equals < 0 ? '' : part.slice(equals + 1);
    const key = percentDecode(rawKey) ?? rawKey;
    const value = percentDecode(rawValue) ?? rawValue;
    pairs.push(`${escapeRfc3986(key)}=${escapeRfc3986(value)}`);
  }
  // Sorting the whole "key=value" strings orders by key, then by value for a repeated key.
  return pairs
    .sort((a, b) => {
      const [ka, va] = splitPair(a);
      const [kb, vb] = splitPair(b);
      if (ka !== kb) return ka < kb ? -1 : 1;
      return va < vb ? -1 : va > vb ? 1 : 0;
    })
    .join('&');
}

function splitPair(pair: string): [string, string] {
  const equals = pair.indexOf('=');
  return [pair.slice(0, equals), pair.slice(equals + 1)];
}

function canonicalHeaderValue(value: string): string {
  return value
    .replace(/[\r\n]/g, ' ')
    .replace(/[ \t]+/g, ' ')
    .trim();
}

function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

function hmac(key: Buffer | string, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

interface ParsedAuthorization {
  accessKeyId: string;
  date: string;
  region: string;
  service: string;
  terminator: string;
  signedHeaders: string[];
  signature: string;
}

function parseAuthorization(header: string): ParsedAuthorization | undefined {
  if (!header.startsWith(`${ALGORITHM} `)) return undefined;
  const fields = new Map<string, string>();
  for (const part of header.slice(ALGORITHM.length + 1).split(',')) {
    const trimmed = part.trim();
    const equals = trimmed.indexOf('=');
    if (equals <= 0) return undefined;
    fields.set(trimmed.slice(0, equals), trimmed.slice(equals + 1));
  }
  const credential = fields.get('Credential');
  const signedHeaders = fields.get('SignedHeaders');
  const signature = fields.get('Signature');
  if (!credential || !signedHeaders || !signature) return undefined;
  const scope = credential.split('/');
  if (scope.length !== 5) return undefined;
  const [accessKeyId, date, region, service, terminator] = scope;
  return { accessKeyId, date, region, service, terminator, signedHeaders: signedHeaders.split(';'), signature };
}

function parseAmzDate(text: string): number | undefined {
  const match = AMZ_DATE_PATTERN.exec(text);
  if (!match) return undefined;
  const [, y, mo, d, h, mi, s] = match;
  const ms = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s));
  return Number.isNaN(ms) ? undefined : ms;
}

function formatAmzDate(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}Z$/, 'Z');
}

export class SigV4Verifier {
  private readonly signingKeys = new Map<string, Buffer>();

  constructor(private readonly credentials: SigV4Credentials) {}

  /**
   * Throws the 403 error AWS would send, or returns when the signature is good.
   * `payloadHash` is what the canonical request ends with: the x-amz-content-sha256
   * header when the client sent one (checked against the body by the caller), else
   * the hex SHA-256 of the body.
   */
  verify(request: SignedRequest, payloadHash: string, nowMs: number): VerifiedRequest {
    const authorization = request.headers.get('authorization');
    if (authorization === undefined) {
      throw authError('MissingAuthenticationTokenException', 'Missing Authentication Token');
    }
    const auth = parseAuthorization(authorization);
    if (!auth) {
      throw authError(
        'IncompleteSignatureException',
        `Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters, signed with ${ALGORITHM}.`,
      );
    }
    if (auth.accessKeyId !== this.credentials.accessKeyId) {
      throw authError('UnrecognizedClientException', 'The security token included in the request is invalid.');
    }
    if (auth.service !== SIGNING_SERVICE) {
      throw authError('InvalidSignatureException', `Credential should be scoped to correct service: '${SIGNING_SERVICE}'.`);
    }
    if (auth.terminator !== 'aws4_request' || auth.region === '' || !/^\d{8}$/.test(auth.date)) {
      throw authError('IncompleteSignatureException', 'Credential should be scoped to a valid date, region, service and aws4_request.');
    }
    const amzDate = request.headers.get('x-amz-date');
    if (amzDate === undefined) {
      throw authError('IncompleteSignatureException', 'The request must contain an X-Amz-Date header.');
    }
    const signedAtMs = parseAmzDate(amzDate);
    if (signedAtMs === undefined) {
      throw authError('IncompleteSignatureException', `X-Amz-Date must be in the form yyyyMMdd'T'HHmmss'Z', not ${amzDate.slice(0, 40)}.`);
    }
    if (auth.date !== amzDate.slice(0, 8)) {
      throw authError(
        'InvalidSignatureException',
        `Date in Credential scope does not match YYYYMMDD from X-Amz-Date: ${auth.date} != ${amzDate.slice(0, 8)}.`,
      );
    }
    if (signedAtMs < nowMs - CLOCK_SKEW_MAX_MS) {
      throw authError(
        'InvalidSignatureException',
        `Signature expired: ${amzDate} is now earlier than ${formatAmzDate(nowMs - CLOCK_SKEW_MAX_MS)} (${formatAmzDate(nowMs)} - 15 min.)`,
      );
    }
    if (signedAtMs > nowMs + CLOCK_SKEW_MAX_MS) {
      throw authError(
        'InvalidSignatureException',
        `Signature not yet current: ${amzDate} is still later than ${formatAmzDate(nowMs + CLOCK_SKEW_MAX_MS)} (${formatAmzDate(nowMs)} + 15 min.)`,
      );
    }
    const signed = new Set(auth.signedHeaders);
    if (!signed.has('host')) {
      throw authError('InvalidSignatureException', "'Host' must be a signed header.");
    }
    for (const name of request.headers.keys()) {
      // Every x-amz-* header (data length, checksum, date...) must be covered,
      // or a man in the middle could change it under a valid signature.
      if (name.startsWith('x-amz-') && !signed.has(name)) {
        throw authError('InvalidSignatureException', `'${name}' must be a signed header.`);
      }
    }
    const canonicalHeaders: string[] = [];
    for (const name of auth.signedHeaders) {
      const value = request.headers.get(name);
      if (value === undefined) {
        throw authError('InvalidSignatureException', `The signed header '${name.slice(0, 64)}' is missing from the request.`);
      }
      canonicalHeaders.push(`${name}:${canonicalHeaderValue(value)}\n`);
    }
    const canonicalRequest = [
      request.method,
      canonicalPath(request.rawPath),
      canonicalQuery(request.rawQuery),
      canonicalHeaders.join(''),
      auth.signedHeaders.join(';'),
      payloadHash,
    ].join('\n');
    const scope = `${auth.date}/${auth.region}/${auth.service}/aws4_request`;
    const stringToSign = `${ALGORITHM}\n${amzDate}\n${scope}\n${sha256Hex(canonicalRequest)}`;
    const expected = hmac(this.signingKey(auth.date, auth.region), stringToSign);
    const given = SIGNATURE_PATTERN.test(auth.signature) ? Buffer.from(auth.signature, 'hex') : Buffer.alloc(0);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      throw authError(
        'InvalidSignatureException',
        'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.',
      );
    }
    return { region: auth.region };
  }

  private signingKey(date: string, region: string): Buffer {
    const cacheKey = `${date}/${region}`;
    let key = this.signingKeys.get(cacheKey);
    if (!key) {
      key = hmac(hmac(hmac(hmac(`AWS4${this.credentials.secretAccessKey}`, date), region), SIGNING_SERVICE), 'aws4_request');
      if (this.signingKeys.size >= SIGNING_KEY_CACHE_MAX_ENTRIES) this.signingKeys.clear();
      this.signingKeys.set(cacheKey, key);
    }
    return key;
  }
}
