/**
 * A TLS front for tests and the demo: the HTTPS side of a simulated CloudPanel server (a real server cannot run
 * here). For each connection it reads the domain from the ClientHello's SNI and serves the certificate the
 * clpctl simulator's state (dev/clpctl_sim.ts) says the site has:
 *
 *   state says           served certificate
 *   lets-encrypt         signed by this simulator's CA (`caPem`, made at start), valid 90 days from
 *                        `installedAt`, for the state's names (as Let's Encrypt issues them)
 *   self-signed          self-signed for the domain, as CloudPanel makes one with every site
 *   no certificate       self-signed for DEFAULT_NAME (another name), as a server's default vhost answers
 *
 * `override(domain, …)` (or the `overrides` option) serves a domain an expired certificate, one for another
 * name, or any dates and names, signed by the CA; the state is read again on every connection, so a
 * certificate installed by clpctl is served from the next connection on.
 *
 * Certificates are made on demand with Web Crypto (ECDSA P-256; the DER writer is below), not with the
 * `openssl` command, so the demo still needs nothing but Deno; each distinct certificate is made once.
 * Rustls, behind `Deno.listenTls`, does the TLS (1.2 and 1.3): one TCP listener peeks at the SNI and
 * pipes the connection, the peeked bytes first, to a loopback `Deno.listenTls` backend that holds that
 * certificate.
 *
 * A fleet of simulated servers shares one simulator: `addStateDir(dir)` adds another server's clpctl state, and
 * a domain's certificate comes from whichever state has it (a domain lives on one server). All servers are on
 * 127.0.0.1 here, so one listener answers for every one of them.
 *
 * `const sim = await startTlsSim({ stateDir }); … sim.address, sim.port, sim.caPem … await sim.close();`
 */
import { readSimState } from "./clpctl_sim.ts";
import { concatBytes } from "../supabase/functions/hosting-automator/bytes.ts";

/** The name on the certificate a domain without one gets. */
export const DEFAULT_NAME = "default-server.invalid";
const CA_NAME = "hosting-automator TLS simulator CA";
const DAY_MS = 86_400_000;
/** Let's Encrypt's certificates last 90 days. */
export const LETS_ENCRYPT_DAYS = 90;
/** The longest ClientHello read for its SNI (a few records). */
const MAX_HELLO_BYTES = 64 * 1024;

/** A certificate signed by the simulator's CA, for a domain whatever its state says. */
export interface CertificateOverride {
  /** Default: the names the state has for the domain, or the domain alone. */
  names?: string[];
  notBefore?: Date;
  notAfter?: Date;
}

/** Ready-made overrides: `"expired"` (ended ten days ago), `"wrong-name"` (for `other.<domain>` only). */
export type Override = CertificateOverride | "expired" | "wrong-name";

export interface TlsSimOptions {
  /** The clpctl simulator's state directory (more with `stateDirs` or `addStateDir`). */
  stateDir?: string;
  /** More state directories: the other servers of a fleet. */
  stateDirs?: string[];
  hostname?: string;
  /** Default 0: a free port. */
  port?: number;
  overrides?: Record<string, Override>;
}

export interface TlsSim {
  address: string;
  port: number;
  /** The CA that signs the "Let's Encrypt" certificates: pass it as `caCerts` to trust them. */
  caPem: string;
  /** Serves the certificates of this clpctl state too, from the next connection on (another server). */
  addStateDir(dir: string): void;
  /** Serves `domain` this certificate from the next connection on; `undefined` goes back to the state's. */
  override(domain: string, override: Override | undefined): void;
  /** The SNI of every connection so far, in order ("" for none). */
  readonly served: readonly string[];
  close(): Promise<void>;
}

interface CertificateSpec {
  issuer: "ca" | "self";
  names: string[];
  notBefore: number;
  notAfter: number;
}

interface Backend {
  listener: Deno.TlsListener;
  port: number;
  loop: Promise<void>;
}

export async function startTlsSim(options: TlsSimOptions): Promise<TlsSim> {
  const hostname = options.hostname ?? "127.0.0.1";
  const ca = await makeCertificate({
    subject: CA_NAME,
    names: [],
    notBefore: Date.now() - DAY_MS,
    notAfter: Date.now() + 3650 * DAY_MS,
    isCa: true,
  });
  const overrides = new Map<string, Override>(Object.entries(options.overrides ?? {}));
  const stateDirs = [
    ...new Set([...(options.stateDir ? [options.stateDir] : []), ...(options.stateDirs ?? [])]),
  ];
  const backends = new Map<string, Promise<Backend>>();
  const open = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  const served: string[] = [];
  const listener = Deno.listen({ hostname, port: options.port ?? 0 });
  let closed = false;

  const track = (task: Promise<void>) => {
    const quiet = task.catch(() => {});
    tasks.add(quiet);
    quiet.finally(() => tasks.delete(quiet));
  };

  async function specFor(servername: string): Promise<CertificateSpec> {
    const domain = servername.toLowerCase();
    // A site's certificate also answers for its other names (`www.`), as the site's vhost does.
    const certificates = domain
      ? (await Promise.all(
        stateDirs.map(async (dir) => Object.values((await readSimState(dir)).certificates)),
      ))
        .flat()
      : [];
    const record = certificates.find((c) => c.domainName === domain) ??
      certificates.find((c) => c.names.includes(domain));
    const chosen = overrides.get(domain);
    if (chosen !== undefined) {
      const now = Date.now();
      const base = typeof chosen === "object" ? chosen : {};
      const names = chosen === "wrong-name" ? [`other.${domain}`] : base.names ?? record?.names ?? [domain];
      const [notBefore, notAfter] = chosen === "expired" ? [now - 100 * DAY_MS, now - 10 * DAY_MS] : [
        base.notBefore?.getTime() ?? now - DAY_MS,
        base.notAfter?.getTime() ?? now + LETS_ENCRYPT_DAYS * DAY_MS,
      ];
      return { issuer: "ca", names, notBefore, notAfter };
    }
    if (!record) {
      return { issuer: "self", names: [DEFAULT_NAME], notBefore: 0, notAfter: Date.UTC(2049, 11, 31) };
    }
    const installed = Date.parse(record.installedAt);
    return record.type === "lets-encrypt"
      ? {
        issuer: "ca",
        names: record.names,
        notBefore: installed,
        notAfter: installed + LETS_ENCRYPT_DAYS * DAY_MS,
      }
      : { issuer: "self", names: record.names, notBefore: installed, notAfter: installed + 3650 * DAY_MS };
  }

  function backendFor(spec: CertificateSpec): Promise<Backend> {
    const key = JSON.stringify(spec);
    let backend = backends.get(key);
    if (!backend) {
      backend = (async () => {
        const made = await makeCertificate({
          subject: spec.names[0] ?? "no name",
          names: spec.names,
          notBefore: spec.notBefore,
          notAfter: spec.notAfter,
          isCa: false,
          signer: spec.issuer === "ca" ? ca : undefined,
        });
        // Rustls sends the chain as given: the leaf, then the CA (as a real server sends its intermediate).
        const cert = spec.issuer === "ca" ? made.certPem + ca.certPem : made.certPem;
        const tls = Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert, key: made.keyPem });
        return { listener: tls, port: (tls.addr as Deno.NetAddr).port, loop: acceptTls(tls) };
      })();
      backends.set(key, backend);
    }
    return backend;
  }

  /** The backend completes handshakes and reads until the client leaves: no application data is served. */
  async function acceptTls(tls: Deno.TlsListener): Promise<void> {
    for await (const conn of tls) {
      open.add(conn);
      track((async () => {
        try {
          await conn.handshake();
          const buffer = new Uint8Array(4096);
          while (await conn.read(buffer) !== null) { /* discard */ }
        } finally {
          open.delete(conn);
          closeQuietly(conn);
        }
      })());
    }
  }

  async function handle(conn: Deno.Conn): Promise<void> {
    let upstream: Deno.Conn | undefined;
    try {
      const hello = await readClientHello(conn);
      if (!hello) return;
      served.push(hello.servername);
      const backend = await backendFor(await specFor(hello.servername));
      if (closed) return;
      upstream = await Deno.connect({ hostname: "127.0.0.1", port: backend.port });
      open.add(upstream);
      await writeAll(upstream, hello.bytes);
      // Whichever side ends first ends both.
      await Promise.race([pump(conn, upstream), pump(upstream, conn)]);
    } finally {
      for (const socket of [conn, upstream]) {
        if (!socket) continue;
        open.delete(socket);
        closeQuietly(socket);
      }
    }
  }

  const loop = (async () => {
    try {
      for await (const conn of listener) {
        if (closed) {
          closeQuietly(conn);
          continue;
        }
        open.add(conn);
        track(handle(conn));
      }
    } catch (error) {
      if (!closed) throw error;
    }
  })();

  return {
    address: hostname,
    port: (listener.addr as Deno.NetAddr).port,
    caPem: ca.certPem,
    served,
    addStateDir(dir) {
      if (!stateDirs.includes(dir)) stateDirs.push(dir);
    },
    override(domain, override) {
      if (override === undefined) overrides.delete(domain.toLowerCase());
      else overrides.set(domain.toLowerCase(), override);
    },
    async close() {
      if (closed) return;
      closed = true;
      listener.close();
      await loop;
      for (const socket of open) closeQuietly(socket);
      const made = await Promise.allSettled(backends.values());
      for (const backend of made) {
        if (backend.status === "fulfilled") backend.value.listener.close();
      }
      await Promise.allSettled(
        made.map((backend) => backend.status === "fulfilled" ? backend.value.loop : undefined),
      );
      while (tasks.size > 0) {
        for (const socket of open) closeQuietly(socket);
        await Promise.allSettled([...tasks]);
      }
    },
  };
}

function closeQuietly(socket: Deno.Conn | Deno.Listener): void {
  try {
    socket.close();
  } catch {
    // already closed
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) written += await conn.write(bytes.subarray(written));
}

async function pump(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(16384);
  try {
    for (;;) {
      const read = await from.read(buffer);
      if (read === null) return;
      await writeAll(to, buffer.subarray(0, read));
    }
  } catch {
    // the other side went away
  }
}

// ---------------------------------------------------------------------------------------------------------
// The ClientHello's SNI (RFC 5246 §7.4.1.2, RFC 6066 §3)

/**
 * Reads until the whole ClientHello is in (it may span records); returns the bytes read (to be replayed to
 * the backend) and the SNI host name ("" when there is none). Null when the client does not speak TLS.
 */
export async function readClientHello(
  conn: Deno.Conn,
): Promise<{ bytes: Uint8Array; servername: string } | null> {
  let bytes = new Uint8Array(0);
  for (;;) {
    const hello = completeHello(bytes);
    if (hello === null) return null;
    if (hello !== undefined) return { bytes, servername: sniOf(hello) };
    if (bytes.length >= MAX_HELLO_BYTES) return null;
    const chunk = new Uint8Array(16384);
    const read = await conn.read(chunk);
    if (read === null) return null;
    bytes = concatBytes(bytes, chunk.subarray(0, read));
  }
}

/** The ClientHello's body once its records are all in; undefined: not yet; null: not a TLS ClientHello. */
function completeHello(bytes: Uint8Array): Uint8Array | undefined | null {
  let handshake = new Uint8Array(0);
  for (let at = 0; at + 5 <= bytes.length;) {
    if (bytes[at] !== 22) return null;
    const end = at + 5 + (bytes[at + 3] << 8 | bytes[at + 4]);
    if (end > bytes.length) break;
    handshake = concatBytes(handshake, bytes.subarray(at + 5, end));
    at = end;
  }
  if (bytes.length > 0 && bytes[0] !== 22) return null;
  if (handshake.length < 4) return undefined;
  if (handshake[0] !== 1) return null;
  const length = handshake[1] << 16 | handshake[2] << 8 | handshake[3];
  return handshake.length >= 4 + length ? handshake.subarray(4, 4 + length) : undefined;
}

function sniOf(hello: Uint8Array): string {
  const u16 = (at: number) => hello[at] << 8 | hello[at + 1];
  let at = 2 + 32; // version, random
  at += 1 + hello[at]; // session id
  at += 2 + u16(at); // cipher suites
  at += 1 + hello[at]; // compression methods
  if (at + 2 > hello.length) return "";
  const end = Math.min(hello.length, at + 2 + u16(at));
  at += 2;
  while (at + 4 <= end) {
    const type = u16(at);
    const length = u16(at + 2);
    if (type === 0 && at + 9 <= end && hello[at + 6] === 0) {
      const nameLength = u16(at + 7);
      return new TextDecoder().decode(hello.subarray(at + 9, at + 9 + nameLength)).toLowerCase();
    }
    at += 4 + length;
  }
  return "";
}

// ---------------------------------------------------------------------------------------------------------
// Certificates (RFC 5280), ECDSA P-256 with SHA-256, written as DER

interface MadeCertificate {
  certPem: string;
  keyPem: string;
  subject: string;
  key: CryptoKey;
}

interface CertificateRequest {
  subject: string;
  names: string[];
  notBefore: number;
  notAfter: number;
  isCa: boolean;
  /** The CA that signs it; none: self-signed. */
  signer?: MadeCertificate;
}

async function makeCertificate(request: CertificateRequest): Promise<MadeCertificate> {
  const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ]);
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
  const serial = crypto.getRandomValues(new Uint8Array(16));
  serial[0] = serial[0] & 0x7f | 0x01; // positive and not zero
  const ecdsaWithSha256 = seq(oid("1.2.840.10045.4.3.2"));
  const extensions = request.isCa
    ? [
      extension("2.5.29.19", true, seq(der(0x01, [0xff]))), // basicConstraints: CA
      extension("2.5.29.15", true, der(0x03, [0x01, 0x06])), // keyUsage: keyCertSign, cRLSign
    ]
    : [
      extension("2.5.29.19", true, seq()), // basicConstraints: not a CA
      extension("2.5.29.15", true, der(0x03, [0x07, 0x80])), // keyUsage: digitalSignature
      extension("2.5.29.37", false, seq(oid("1.3.6.1.5.5.7.3.1"))), // extKeyUsage: serverAuth
      extension(
        "2.5.29.17",
        false,
        seq(...request.names.map((n) => der(0x82, [...new TextEncoder().encode(n)]))),
      ),
    ];
  const tbs = seq(
    der(0xa0, der(0x02, [0x02])), // version 3
    der(0x02, [...serial]),
    ecdsaWithSha256,
    name(request.signer?.subject ?? request.subject),
    seq(time(request.notBefore), time(request.notAfter)),
    name(request.subject),
    [...spki],
    der(0xa3, seq(...extensions)),
  );
  const signature = new Uint8Array(
    await crypto.subtle.sign(
      { name: "ECDSA", hash: "SHA-256" },
      request.signer?.key ?? pair.privateKey,
      new Uint8Array(tbs),
    ),
  );
  // Web Crypto gives r‖s; X.509 wants SEQUENCE { INTEGER r, INTEGER s }.
  const ecdsaSignature = seq(integer(signature.subarray(0, 32)), integer(signature.subarray(32)));
  const certificate = seq(tbs, ecdsaWithSha256, der(0x03, [0x00, ...ecdsaSignature]));
  return {
    certPem: pem("CERTIFICATE", new Uint8Array(certificate)),
    keyPem: pem("PRIVATE KEY", pkcs8),
    subject: request.subject,
    key: pair.privateKey,
  };
}

function der(tag: number, ...contents: number[][]): number[] {
  const body = contents.flat();
  const n = body.length;
  const length = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : n < 0x10000 ? [0x82, n >> 8, n & 0xff] : [
    0x83,
    n >> 16,
    n >> 8 & 0xff,
    n & 0xff,
  ];
  return [tag, ...length, ...body];
}

const seq = (...items: number[][]) => der(0x30, ...items);

function oid(dotted: string): number[] {
  const [first, second, ...rest] = dotted.split(".").map(Number);
  const out = [first * 40 + second];
  for (const arc of rest) {
    const septets = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) septets.unshift(v & 0x7f | 0x80);
    out.push(...septets);
  }
  return der(0x06, out);
}

function integer(bytes: Uint8Array): number[] {
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0) start++;
  const trimmed = [...bytes.subarray(start)];
  return der(0x02, trimmed[0] & 0x80 ? [0, ...trimmed] : trimmed);
}

/** A Name with one CN (UTF8String). */
function name(commonName: string): number[] {
  return seq(der(0x31, seq(oid("2.5.4.3"), der(0x0c, [...new TextEncoder().encode(commonName)]))));
}

/** UTCTime through 2049, GeneralizedTime after, whole seconds (RFC 5280 §4.1.2.5). */
function time(ms: number): number[] {
  const iso = new Date(Math.floor(ms / 1000) * 1000).toISOString(); // 2025-01-02T03:04:05.000Z
  const digits = iso.slice(0, 19).replace(/[-T:]/g, "");
  const year = Number(iso.slice(0, 4));
  const text = year >= 1950 && year < 2050 ? digits.slice(2) + "Z" : digits + "Z";
  return der(year >= 1950 && year < 2050 ? 0x17 : 0x18, [...new TextEncoder().encode(text)]);
}

function extension(id: string, critical: boolean, value: number[]): number[] {
  return seq(oid(id), ...(critical ? [der(0x01, [0xff])] : []), der(0x04, value));
}

function pem(label: string, bytes: Uint8Array): string {
  const base64 = btoa(String.fromCharCode(...bytes));
  const lines = base64.match(/.{1,64}/g)!.join("\n");
  return `-----BEGIN ${label}-----\n${lines}\n-----END ${label}-----\n`;
}
