import crypto, { X509Certificate as NodeCertificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { TLSSocket } from 'node:tls';
// @peculiar/x509 resolves its parts through tsyringe, which needs the Reflect metadata API
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { Utf8String, fromBER } from 'asn1js';
import { ConfigError } from '../common/errors';
import type { TokenClaims } from './claims';
import { TOKEN_ERROR, TokenError } from './errors';

x509.cryptoProvider.set(crypto.webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

type CryptoKey = crypto.webcrypto.CryptoKey;
type CryptoKeyPair = crypto.webcrypto.CryptoKeyPair;

/**
 * custody's certificate extension: the certificate's claims as JSON (a DER UTF8String), the same
 * claims a token for the tool carries. The OID is derived from a UUID in the registration-free
 * arc 1.2.840.113556.1.8000.2554 (the GUID split into small arcs, which every ASN.1 library
 * encodes; a 2.25 UUID OID's 128-bit arc is not). Not critical: TLS stacks that do not know it
 * still complete the handshake.
 */
export const CLAIMS_EXTENSION_OID = '1.2.840.113556.1.8000.2554.12590.28702.54359.19924.37418.1720800.5232157';

const KEY_ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING_ALGORITHM = { name: 'ECDSA', hash: 'SHA-256' } as const;
/** The authority's own certificate: long-lived; what it signs lives at most max_ttl_seconds. */
const CA_VALIDITY_MS = 10 * 365 * 24 * 3600 * 1000;

export interface CertificateAuthority {
  /** The authority's certificate (PEM): servers' --client-ca, GET /v1/certs/ca.pem. */
  readonly certificatePem: string;
  /** Where its key lives, for the start banner. */
  readonly description: string;
  readonly trustDomain: string;
  /**
   * A client certificate for `claims` (a token's claims: its lifetime, tool and chain), binding
   * `publicKey` (SPKI DER). Subject CN is the agent instance; the URI SAN is its SPIFFE-style id.
   */
  issue(claims: TokenClaims, publicKey: Uint8Array): Promise<string>;
}

/** spiffe://<trust domain>/sponsor/<sponsor>/agent/<instance> (each segment percent-encoded). */
export function spiffeIdOf(trustDomain: string, claims: Pick<TokenClaims, 'sponsor_id' | 'agent_instance_id'>): string {
  return `spiffe://${trustDomain}/sponsor/${encodeURIComponent(claims.sponsor_id ?? '-')}/agent/${encodeURIComponent(claims.agent_instance_id)}`;
}

/**
 * The authority from its files (made there on first start when they do not exist yet), or
 * generated in memory when no files are configured.
 */
export async function loadCertificateAuthority(o: { keyFile?: string | undefined; certFile?: string | undefined; trustDomain?: string; now?: () => number }): Promise<CertificateAuthority> {
  const now = o.now ?? Date.now;
  const trustDomain = o.trustDomain ?? 'custody';
  let signingKey: CryptoKey;
  let caCert: x509.X509Certificate;
  let description: string;
  if (o.keyFile && o.certFile && fs.existsSync(o.keyFile) && fs.existsSync(o.certFile)) {
    const keyPem = readText(o.keyFile);
    caCert = parseCertificate(readText(o.certFile), o.certFile);
    try {
      const der = crypto.createPrivateKey(keyPem).export({ type: 'pkcs8', format: 'der' });
      signingKey = await crypto.webcrypto.subtle.importKey('pkcs8', der, KEY_ALGORITHM, false, ['sign']) as CryptoKey;
    } catch (err) {
      throw new ConfigError(`${o.keyFile}: not an ECDSA P-256 private key (PKCS8 PEM): ${(err as Error).message}`, { cause: err });
    }
    const fromKey = crypto.createPublicKey(keyPem).export({ type: 'spki', format: 'der' });
    if (!Buffer.from(caCert.publicKey.rawData).equals(fromKey)) {
      throw new ConfigError(`${o.certFile}: the certificate does not hold the public half of ${o.keyFile}`);
    }
    description = o.keyFile;
  } else {
    if ((o.keyFile === undefined) !== (o.certFile === undefined)) throw new ConfigError('certificates: give both ca_key_file and ca_cert_file, or neither');
    if (o.keyFile && o.certFile && (fs.existsSync(o.keyFile) || fs.existsSync(o.certFile))) {
      const [found, missing] = fs.existsSync(o.keyFile) ? [o.keyFile, o.certFile] : [o.certFile, o.keyFile];
      throw new ConfigError(`certificates: ${found} exists but ${missing} does not; restore it, or remove both to make a new authority`);
    }
    const keys = (await crypto.webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify'])) as CryptoKeyPair;
    caCert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: crypto.randomBytes(16).toString('hex').replace(/^[89a-f]/, '1'),
      name: `CN=custody client CA, O=${trustDomain}`,
      notBefore: new Date(now() - 60_000),
      notAfter: new Date(now() + CA_VALIDITY_MS),
      signingAlgorithm: SIGNING_ALGORITHM,
      keys,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    signingKey = keys.privateKey;
    if (o.keyFile && o.certFile) {
      const pkcs8 = Buffer.from(await crypto.webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
      const keyPem = crypto.createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }) as string;
      fs.mkdirSync(path.dirname(o.keyFile), { recursive: true });
      fs.mkdirSync(path.dirname(o.certFile), { recursive: true });
      fs.writeFileSync(o.keyFile, keyPem, { mode: 0o600, flag: 'wx' });
      fs.writeFileSync(o.certFile, caCert.toString('pem'), { flag: 'wx' });
      description = `${o.keyFile} (made now)`;
    } else {
      description = 'generated in memory';
    }
  }
  const certificatePem = caCert.toString('pem');
  const authorityKeyId = await x509.AuthorityKeyIdentifierExtension.create(caCert, false);

  return {
    certificatePem,
    description,
    trustDomain,
    async issue(claims, publicKey) {
      const cert = await x509.X509CertificateGenerator.create({
        serialNumber: serialOf(claims.jti),
        subject: [{ CN: [claims.agent_instance_id] }],
        issuer: caCert.subject,
        notBefore: new Date(claims.nbf * 1000),
        notAfter: new Date(claims.exp * 1000),
        signingAlgorithm: SIGNING_ALGORITHM,
        signingKey,
        publicKey: Uint8Array.from(publicKey).buffer,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth], false),
          new x509.SubjectAlternativeNameExtension([{ type: 'url', value: spiffeIdOf(trustDomain, claims) }], false),
          authorityKeyId,
          new x509.Extension(CLAIMS_EXTENSION_OID, false, new Utf8String({ value: JSON.stringify(claims) }).toBER()),
        ],
      });
      return cert.toString('pem');
    },
  };
}

/** A public key sent to be certified: SPKI PEM ("-----BEGIN PUBLIC KEY-----") or a PKCS#10 request (proof of possession checked). */
export async function publicKeyOf(o: { public_key?: string | undefined; csr?: string | undefined }): Promise<Uint8Array> {
  if (o.csr !== undefined) {
    let csr: x509.Pkcs10CertificateRequest;
    try {
      csr = new x509.Pkcs10CertificateRequest(o.csr);
    } catch (err) {
      throw new TypeError(`'csr' is not a PKCS#10 certificate request (PEM): ${(err as Error).message}`);
    }
    if (!(await csr.verify())) throw new TypeError("'csr' is not signed by the key it holds");
    return new Uint8Array(csr.publicKey.rawData);
  }
  if (o.public_key === undefined) throw new TypeError("give 'public_key' (SPKI PEM) or 'csr' (PKCS#10 PEM)");
  let key: crypto.KeyObject;
  try {
    key = crypto.createPublicKey(o.public_key);
  } catch (err) {
    throw new TypeError(`'public_key' is not a public key (SPKI PEM): ${(err as Error).message}`);
  }
  const curve = key.asymmetricKeyDetails?.namedCurve;
  if (!(key.asymmetricKeyType === 'ec' && (curve === 'prime256v1' || curve === 'secp384r1')) && key.asymmetricKeyType !== 'ed25519') {
    throw new TypeError(`'public_key' must be an ECDSA P-256/P-384 or Ed25519 key, not ${key.asymmetricKeyType}${curve ? ` (${curve})` : ''}`);
  }
  return new Uint8Array(key.export({ type: 'spki', format: 'der' }));
}

/** The certificates of a --client-ca file (one or more PEM blocks). */
export function readCertificateAuthorities(file: string): NodeCertificate[] {
  return parseCertificateAuthorities(readText(file), file);
}

/** Authorities' certificates from PEM text (one or more blocks); `file` names it in errors. */
export function parseCertificateAuthorities(text: string, file: string): NodeCertificate[] {
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new ConfigError(`${file}: holds no PEM certificate`);
  return blocks.map((pem, i) => {
    try {
      return new NodeCertificate(pem);
    } catch (err) {
      throw new ConfigError(`${file}: certificate ${i + 1} does not parse: ${(err as Error).message}`, { cause: err });
    }
  });
}

/**
 * The claims of the client certificate a request came with, as a thunk for the verifier (which
 * then checks them like a token's), or undefined: no TLS, no certificate, or no authority to check it against.
 */
export function peerClaimsOf(socket: unknown, authorities: readonly NodeCertificate[], now: () => number = Date.now, graceMs = 0): (() => unknown) | undefined {
  if (authorities.length === 0) return undefined;
  const der = peerCertificateOf(socket);
  return der ? () => certificateClaims(der, authorities, now(), graceMs) : undefined;
}

/** The client certificate a TLS peer presented (DER), if the request came over TLS with one. */
export function peerCertificateOf(socket: unknown): Buffer | undefined {
  if (!(socket instanceof TLSSocket)) return undefined;
  const cert = socket.getPeerCertificate(false);
  return cert && Buffer.isBuffer(cert.raw) && cert.raw.length > 0 ? cert.raw : undefined;
}

/** Certificates read before, by their SHA-256: a connection presents its certificate on every request. */
const parsed = new Map<string, ReadCertificate>();
const PARSED_MAX = 10_000;

/**
 * The claims of a client certificate custody's authority issued: its signature is checked against
 * `authorities` here (whatever else the server's TLS trusts), then its validity period; the claims
 * themselves are checked by the verifier like a token's (tool, chain, revocations). Throws a
 * TokenError naming what was wrong.
 */
export function certificateClaims(der: Buffer, authorities: readonly NodeCertificate[], nowMs: number, graceMs = 0): unknown {
  const key = crypto.createHash('sha256').update(der).digest('base64');
  let known = parsed.get(key);
  if (!known) {
    known = readClaims(der, authorities);
    if (parsed.size >= PARSED_MAX) parsed.clear();
    parsed.set(key, known);
  }
  if ('error' in known) throw known.error;
  if (known.validTo + graceMs <= nowMs) throw new TokenError(TOKEN_ERROR.EXPIRED, `the client certificate expired at ${new Date(known.validTo).toISOString()}`);
  if (known.validFrom > nowMs + 5_000) throw new TokenError(TOKEN_ERROR.NOT_YET_VALID, `the client certificate is not valid before ${new Date(known.validFrom).toISOString()}`);
  return known.payload;
}

/** A certificate read once: its claims and validity (epoch ms), or why it is refused. */
type ReadCertificate = { payload: unknown; validFrom: number; validTo: number } | { error: TokenError };

function readClaims(der: Buffer, authorities: readonly NodeCertificate[]): ReadCertificate {
  let cert: NodeCertificate;
  try {
    cert = new NodeCertificate(der);
  } catch {
    return { error: new TokenError(TOKEN_ERROR.MALFORMED, 'the client certificate does not parse') };
  }
  const issuer = authorities.find((ca) => cert.checkIssued(ca) && cert.verify(ca.publicKey));
  if (!issuer) return { error: new TokenError(TOKEN_ERROR.SIGNATURE, "the client certificate was not issued by custody's certificate authority (--client-ca)") };
  const ext = new x509.X509Certificate(der).getExtension(CLAIMS_EXTENSION_OID);
  if (!ext) return { error: new TokenError(TOKEN_ERROR.CLAIMS, "the client certificate carries no custody claims (it was not issued by POST /v1/certs)") };
  const asn = fromBER(ext.value);
  if (asn.offset === -1 || !(asn.result instanceof Utf8String)) return { error: new TokenError(TOKEN_ERROR.CLAIMS, "the certificate's custody claims are not a UTF8String") };
  try {
    return { payload: JSON.parse(asn.result.getValue()), validFrom: Date.parse(cert.validFrom), validTo: Date.parse(cert.validTo) };
  } catch {
    return { error: new TokenError(TOKEN_ERROR.CLAIMS, "the certificate's custody claims are not JSON") };
  }
}

/** A positive serial number (hex) derived from the jti: a certificate and its claims share one id. */
function serialOf(jti: string): string {
  const h = crypto.createHash('sha256').update(jti).digest();
  h[0] = h[0]! & 0x7f || 0x01;
  return h.subarray(0, 16).toString('hex');
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
}

function parseCertificate(pem: string, where: string): x509.X509Certificate {
  try {
    return new x509.X509Certificate(pem);
  } catch (err) {
    throw new ConfigError(`${where}: not a PEM certificate: ${(err as Error).message}`, { cause: err });
  }
}
