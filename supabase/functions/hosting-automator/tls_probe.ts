/**
 * The certificate a server actually serves for a domain: whether a browser would accept it, which names it
 * covers and when it expires.
 *
 * Two connections, side by side:
 *   - trust: `Deno.startTls` with the domain as SNI and the system's roots (or `caCerts`), handshake only.
 *     Deno verifies the chain, the validity dates and the name; its verdict is the one that counts.
 *   - the leaf itself: Deno's TLS connection does not expose the peer's certificate, and on Deno 2.1 (the hosted
 *     Edge Runtime's) `node:tls`'s `getPeerCertificate` answers a fixed placeholder. So a minimal TLS 1.2
 *     ClientHello is sent by hand: up to TLS 1.2 the server's Certificate message travels in clear, and the
 *     first certificate in it is read (notAfter and the subjectAltName DNS names), then the socket is closed
 *     before any key exchange. A server that speaks only TLS 1.3 therefore cannot be probed for its expiry.
 *
 * Valid = trusted, the names cover the domain (exactly, or a wildcard for one label) and the certificate
 * expires more than `minValidDays` days from now. A server that cannot be reached (refused, reset, no
 * answer in time) is the transient `https_unreachable`; any other way the server fails the check is
 * `valid: false` with a short reason (it holds no secret: certificate errors and names only).
 */
import { HostingError, isHostingError } from "./errors.ts";
import { concatBytes } from "./bytes.ts";

export interface ProbeOptions {
  /** Host name or IP address to connect to (the CloudPanel server), not necessarily the domain's DNS. */
  address: string;
  port?: number;
  /** The domain, as sent in SNI and verified: its ASCII form (an IDN as punycode). */
  servername: string;
  /** PEM roots to trust instead of the system's (tests, private CAs). */
  caCerts?: string[];
  /** For the whole probe, both connections included. */
  timeoutMs: number;
  signal?: AbortSignal;
  /** A certificate that expires within this many days counts as not valid (it is due for renewal). */
  minValidDays: number;
  /** The clock the expiry is measured against. */
  now?: () => Date;
}

export type ProbeResult =
  /**
   * `notAfter` and `names` are absent when the server speaks only TLS 1.3: its certificate cannot be read on
   * Deno 2.1, but the handshake's own check (chain, name, not expired) passed; `note` says so.
   */
  | { valid: true; notAfter?: Date; names?: string[]; note?: string }
  | { valid: false; reason: string; notAfter?: Date; names?: string[] };

/** What the leaf certificate says about itself (not verified: that is the trust connection's job). */
export interface LeafCertificate {
  notBefore: Date;
  notAfter: Date;
  /** subjectAltName dNSName entries, lower case. A name only in the subject's CN is not used by browsers. */
  names: string[];
}

const DAY_MS = 86_400_000;
/** A certificate chain is a few KiB; anything near this is not a certificate message worth reading. */
const MAX_HANDSHAKE_BYTES = 256 * 1024;
const MAX_REASON_LENGTH = 200;

export async function probeCertificate(options: ProbeOptions): Promise<ProbeResult> {
  const { address, port = 443, servername, timeoutMs, minValidDays } = options;
  if (!/^[a-z0-9.-]{1,253}$/i.test(servername)) {
    throw new HostingError("invalid_domain", `not a host name for SNI: ${JSON.stringify(servername)}`);
  }
  const where = `${address}:${port} for ${servername}`;
  const stop = new Stop(timeoutMs, options.signal, where);
  try {
    const [leaf, trust] = await Promise.allSettled([
      stop.guard(readLeafCertificate(address, port, servername, stop)),
      stop.guard(verifyTrust(address, port, servername, options.caCerts, stop)),
    ]);
    // A deadline or abort that came after both connections had finished changes nothing.
    if (stop.reason && (leaf.status === "rejected" || trust.status === "rejected")) throw stop.reason;
    for (const settled of [leaf, trust]) {
      if (settled.status === "rejected" && !(settled.reason instanceof NotServed)) throw settled.reason;
    }
    const found = leaf.status === "fulfilled" ? leaf.value : undefined;
    const seen = found ? { notAfter: found.notAfter, names: found.names } : {};
    if (trust.status === "rejected") return { valid: false, reason: trust.reason.message, ...seen };
    if (!found) {
      // The handshake checked the chain, the name and that it has not expired; only the margin of days is
      // unknown. Counted valid: a site is not held back, nor a certificate issued twice, for the TLS version.
      const why = (leaf as PromiseRejectedResult).reason.message;
      return { valid: true, note: `trusted; its expiry could not be read (${why})` };
    }
    const verdict = judge(found, servername, minValidDays, (options.now ?? (() => new Date()))());
    return verdict === null
      ? { valid: true, notAfter: found.notAfter, names: found.names }
      : { valid: false, reason: verdict, ...seen };
  } finally {
    stop.dispose();
  }
}

/** Null when the certificate covers the name and lasts long enough; otherwise why not. */
export function judge(
  leaf: LeafCertificate,
  servername: string,
  minValidDays: number,
  now: Date,
): string | null {
  if (!namesCover(leaf.names, servername)) {
    return `the certificate is for ${leaf.names.join(", ") || "no DNS name"}, not ${servername}`;
  }
  if (leaf.notAfter.getTime() <= now.getTime()) {
    return `the certificate expired on ${leaf.notAfter.toISOString()}`;
  }
  if (leaf.notAfter.getTime() - now.getTime() <= minValidDays * DAY_MS) {
    return `the certificate expires on ${leaf.notAfter.toISOString()}, within ${minValidDays} days`;
  }
  return null;
}

/** RFC 6125: an exact name (any case), or `*.` standing for exactly one whole left-most label. */
export function namesCover(names: string[], servername: string): boolean {
  const host = servername.toLowerCase().replace(/\.$/, "");
  return names.some((raw) => {
    const name = raw.toLowerCase();
    if (name === host) return true;
    if (!name.startsWith("*.")) return false;
    const dot = host.indexOf(".");
    return dot > 0 && host.slice(dot + 1) === name.slice(2) && name.slice(2).includes(".");
  });
}

// ---------------------------------------------------------------------------------------------------------
// The deadline, the caller's signal and the sockets

/** The server answered, but not with a usable certificate: `valid: false` with this message as the reason. */
class NotServed extends Error {
  override name = "NotServed";
}

/**
 * One deadline and the caller's signal for both connections. When either trips, or a connection finds the
 * server unreachable, every socket is closed at once (which ends their pending reads and handshakes).
 */
class Stop {
  reason: HostingError | undefined;
  readonly #sockets = new Set<Deno.Conn>();
  /** Rejects with `reason` when the probe stops: what a connect that has no signal of its own races. */
  readonly #tripped: Promise<never>;
  #reject!: (reason: HostingError) => void;
  readonly #timer: number;
  readonly #signal?: AbortSignal;
  readonly #onAbort: () => void;

  constructor(ms: number, signal: AbortSignal | undefined, readonly where: string) {
    this.#tripped = new Promise<never>((_, reject) => (this.#reject = reject));
    this.#tripped.catch(() => {});
    this.#timer = setTimeout(
      () => this.trip(new HostingError("https_unreachable", `${where}: no answer within ${ms} ms`)),
      ms,
    );
    this.#signal = signal;
    this.#onAbort = () => {
      const reason = signal!.reason;
      this.trip(
        isHostingError(reason)
          ? reason
          : new HostingError("interrupted", `probing ${where}: aborted (${describe(reason)})`, {
            cause: reason,
          }),
      );
    };
    if (signal?.aborted) this.#onAbort();
    else signal?.addEventListener("abort", this.#onAbort, { once: true });
  }

  trip(reason: HostingError): void {
    if (this.reason) return;
    this.reason = reason;
    this.#reject(reason);
    for (const socket of this.#sockets) closeQuietly(socket);
    this.#sockets.clear();
  }

  /** A failure that is not about the certificate (the server cannot be reached) ends the other connection too. */
  async guard<T>(work: Promise<T>): Promise<T> {
    try {
      return await work;
    } catch (error) {
      if (isHostingError(error)) this.trip(error);
      throw this.reason ?? error;
    }
  }

  /** A connected socket, closed when the probe stops; a connection that arrives after the stop is closed. */
  async connect(address: string, port: number): Promise<Deno.TcpConn> {
    if (this.reason) throw this.reason;
    // Deno.connect takes no signal: a connect still pending when the probe stops (a host that drops the SYN)
    // is left to finish, and its socket closed as soon as it arrives.
    const pending = Deno.connect({ hostname: address, port });
    let conn: Deno.TcpConn;
    try {
      conn = await Promise.race([pending, this.#tripped]);
    } catch (error) {
      if (this.reason) {
        pending.then(closeQuietly, () => {});
        throw this.reason;
      }
      throw new HostingError("https_unreachable", `${this.where}: ${describe(error)}`, { cause: error });
    }
    if (this.reason) {
      closeQuietly(conn);
      throw this.reason;
    }
    this.#sockets.add(conn);
    return conn;
  }

  /** Swaps the tracked socket for the one that now owns it (Deno.startTls takes the TCP connection over). */
  replace(from: Deno.Conn, to: Deno.Conn): void {
    this.#sockets.delete(from);
    if (this.reason) closeQuietly(to);
    else this.#sockets.add(to);
  }

  close(socket: Deno.Conn): void {
    this.#sockets.delete(socket);
    closeQuietly(socket);
  }

  dispose(): void {
    clearTimeout(this.#timer);
    this.#signal?.removeEventListener("abort", this.#onAbort);
    for (const socket of this.#sockets) closeQuietly(socket);
    this.#sockets.clear();
  }
}

function closeQuietly(socket: Deno.Conn): void {
  try {
    socket.close();
  } catch {
    // already closed
  }
}

function describe(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}

/** Errors that mean the network or the server went away rather than that the server spoke bad TLS. */
function isConnectionLoss(error: unknown): boolean {
  return error instanceof Deno.errors.ConnectionReset || error instanceof Deno.errors.ConnectionAborted ||
    error instanceof Deno.errors.BrokenPipe || error instanceof Deno.errors.TimedOut ||
    error instanceof Deno.errors.NotConnected;
}

function shortReason(text: string): string {
  const line = text.split("\n")[0].trim();
  return line.length > MAX_REASON_LENGTH ? `${line.slice(0, MAX_REASON_LENGTH - 1)}…` : line;
}

// ---------------------------------------------------------------------------------------------------------
// Trust: Deno's own verification

async function verifyTrust(
  address: string,
  port: number,
  servername: string,
  caCerts: string[] | undefined,
  stop: Stop,
): Promise<void> {
  const tcp = await stop.connect(address, port);
  let tls: Deno.TlsConn;
  try {
    tls = await Deno.startTls(tcp, { hostname: servername, ...(caCerts ? { caCerts } : {}) });
  } catch (error) {
    stop.close(tcp);
    throw error;
  }
  stop.replace(tcp, tls);
  try {
    await tls.handshake();
  } catch (error) {
    if (stop.reason) throw stop.reason;
    if (isConnectionLoss(error)) {
      throw new HostingError("https_unreachable", `${stop.where}: ${describe(error)}`, { cause: error });
    }
    // e.g. "invalid peer certificate: UnknownIssuer", "… Expired", "… NotValidForName"
    throw new NotServed(shortReason(error instanceof Error ? error.message : String(error)));
  } finally {
    stop.close(tls);
  }
}

// ---------------------------------------------------------------------------------------------------------
// The leaf certificate, read from a TLS 1.2 handshake

/** The server's first certificate (DER) from a TLS 1.2 handshake, then the connection is dropped. */
async function readLeafCertificate(
  address: string,
  port: number,
  servername: string,
  stop: Stop,
): Promise<LeafCertificate> {
  const conn = await stop.connect(address, port);
  try {
    await writeAll(conn, clientHello(servername));
    const der = await readCertificateMessage(conn);
    return parseCertificate(der);
  } catch (error) {
    if (stop.reason) throw stop.reason;
    if (isHostingError(error) || error instanceof NotServed) throw error;
    if (isConnectionLoss(error)) {
      throw new HostingError("https_unreachable", `${stop.where}: ${describe(error)}`, { cause: error });
    }
    throw new NotServed(shortReason(describe(error)));
  } finally {
    stop.close(conn);
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) written += await conn.write(bytes.subarray(written));
}

/** Cipher suites a TLS 1.2 server of the last decade picks one of: ECDHE and RSA key exchange, AES-GCM. */
const CIPHER_SUITES = [
  0xc02b, // ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
  0xc02f, // ECDHE_RSA_WITH_AES_128_GCM_SHA256
  0xc02c, // ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
  0xc030, // ECDHE_RSA_WITH_AES_256_GCM_SHA384
  0xcca9, // ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
  0xcca8, // ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
  0xc009, // ECDHE_ECDSA_WITH_AES_128_CBC_SHA
  0xc013, // ECDHE_RSA_WITH_AES_128_CBC_SHA
  0x009c, // RSA_WITH_AES_128_GCM_SHA256
  0x009d, // RSA_WITH_AES_256_GCM_SHA384
  0x002f, // RSA_WITH_AES_128_CBC_SHA
  0x00ff, // EMPTY_RENEGOTIATION_INFO_SCSV (RFC 5746: some servers refuse a hello without it)
];
const GROUPS = [0x001d, 0x0017, 0x0018]; // x25519, secp256r1, secp384r1
const SIGNATURE_ALGORITHMS = [
  0x0403, // ecdsa_secp256r1_sha256
  0x0503, // ecdsa_secp384r1_sha384
  0x0804, // rsa_pss_rsae_sha256
  0x0805, // rsa_pss_rsae_sha384
  0x0806, // rsa_pss_rsae_sha512
  0x0401, // rsa_pkcs1_sha256
  0x0501, // rsa_pkcs1_sha384
  0x0601, // rsa_pkcs1_sha512
];

/** A TLS 1.2 ClientHello record (RFC 5246 §7.4.1.2) with SNI, groups, point formats and signature algorithms. */
export function clientHello(servername: string): Uint8Array {
  const u16 = (n: number) => [n >> 8 & 0xff, n & 0xff];
  const u16list = (values: number[]) => [...u16(values.length * 2), ...values.flatMap(u16)];
  const extension = (type: number, body: number[]) => [...u16(type), ...u16(body.length), ...body];
  const name = [...new TextEncoder().encode(servername.toLowerCase())];
  const extensions = [
    ...extension(0x0000, [...u16(name.length + 3), 0, ...u16(name.length), ...name]), // server_name
    ...extension(0x000a, u16list(GROUPS)), // supported_groups
    ...extension(0x000b, [1, 0]), // ec_point_formats: uncompressed
    ...extension(0x000d, u16list(SIGNATURE_ALGORITHMS)), // signature_algorithms
    ...extension(0x0017, []), // extended_master_secret
  ];
  const body = [
    0x03,
    0x03, // TLS 1.2
    ...crypto.getRandomValues(new Uint8Array(32)),
    0, // no session id: no resumption, so the server must send its certificate
    ...u16list(CIPHER_SUITES),
    1,
    0, // compression: null only
    ...u16(extensions.length),
    ...extensions,
  ];
  const handshake = [1, body.length >> 16 & 0xff, ...u16(body.length & 0xffff), ...body];
  // The record says TLS 1.0, as browsers do: some old servers drop a first record marked newer.
  return new Uint8Array([22, 0x03, 0x01, ...u16(handshake.length), ...handshake]);
}

/** TLS alert descriptions (RFC 5246 §7.2, RFC 8446 §6) a server may answer a ClientHello with. */
const ALERTS: Record<number, string> = {
  0: "close_notify",
  10: "unexpected_message",
  40: "handshake_failure",
  47: "illegal_parameter",
  50: "decode_error",
  70: "protocol_version",
  71: "insufficient_security",
  80: "internal_error",
  86: "inappropriate_fallback",
  109: "missing_extension",
  112: "unrecognized_name",
  120: "no_application_protocol",
};

/** Reads records until the Certificate handshake message; returns its first certificate. */
export async function readCertificateMessage(conn: Deno.Conn): Promise<Uint8Array> {
  const reader = new RecordReader(conn);
  let handshake = new Uint8Array(0);
  for (;;) {
    const record = await reader.next();
    if (record.type === 21) {
      const description = record.body[1];
      throw new NotServed(
        `the server refused a TLS 1.2 handshake: alert ${ALERTS[description] ?? description}`,
      );
    }
    if (record.type !== 22) {
      throw new NotServed(`the server sent a record of type ${record.type} before its certificate`);
    }
    handshake = concatBytes(handshake, record.body);
    if (handshake.length > MAX_HANDSHAKE_BYTES) throw new NotServed("the server's handshake is too large");
    // Messages may span records and records may hold several messages.
    let at = 0;
    while (handshake.length - at >= 4) {
      const type = handshake[at];
      const length = handshake[at + 1] << 16 | handshake[at + 2] << 8 | handshake[at + 3];
      if (length > MAX_HANDSHAKE_BYTES) throw new NotServed("the server's handshake is too large");
      if (handshake.length - at - 4 < length) break;
      const message = handshake.subarray(at + 4, at + 4 + length);
      if (type === 11) return firstCertificate(message);
      if (type === 14) throw new NotServed("the server sent no certificate");
      if (type !== 2) throw new NotServed(`the server sent handshake message ${type} before its certificate`);
      at += 4 + length;
    }
    handshake = handshake.slice(at);
  }
}

function firstCertificate(message: Uint8Array): Uint8Array {
  if (message.length < 6) throw new NotServed("the server sent an empty certificate list");
  const first = message[3] << 16 | message[4] << 8 | message[5];
  if (first === 0 || 6 + first > message.length) {
    throw new NotServed("the server's certificate list is malformed");
  }
  return message.slice(6, 6 + first);
}

class RecordReader {
  #buffer = new Uint8Array(0);
  constructor(readonly conn: Deno.Conn) {}

  async next(): Promise<{ type: number; body: Uint8Array }> {
    const header = await this.#take(5);
    const length = header[3] << 8 | header[4];
    if (header[1] !== 3 || length > 16384 + 2048) {
      throw new NotServed("the server did not answer with TLS");
    }
    return { type: header[0], body: await this.#take(length) };
  }

  async #take(n: number): Promise<Uint8Array> {
    while (this.#buffer.length < n) {
      const chunk = new Uint8Array(16384);
      const read = await this.conn.read(chunk);
      if (read === null) throw new NotServed("the server closed the connection during the TLS handshake");
      this.#buffer = concatBytes(this.#buffer, chunk.subarray(0, read));
    }
    const taken = this.#buffer.slice(0, n);
    this.#buffer = this.#buffer.slice(n);
    return taken;
  }
}

// ---------------------------------------------------------------------------------------------------------
// X.509, just enough: validity and subjectAltName (RFC 5280 §4.1, §4.2.1.6)

interface Tlv {
  tag: number;
  /** The contents (without tag and length). */
  value: Uint8Array;
  /** Where the next element starts in the enclosing buffer. */
  end: number;
}

function readTlv(buffer: Uint8Array, at: number): Tlv {
  if (at + 2 > buffer.length) throw new NotServed("the certificate is truncated");
  const tag = buffer[at];
  if ((tag & 0x1f) === 0x1f) throw new NotServed("the certificate uses a tag this reader does not know");
  let length = buffer[at + 1];
  let start = at + 2;
  if (length & 0x80) {
    const octets = length & 0x7f;
    if (octets === 0 || octets > 3 || start + octets > buffer.length) {
      throw new NotServed("the certificate has a malformed length");
    }
    length = 0;
    for (let i = 0; i < octets; i++) length = length << 8 | buffer[start + i];
    start += octets;
  }
  if (start + length > buffer.length) throw new NotServed("the certificate is truncated");
  return { tag, value: buffer.subarray(start, start + length), end: start + length };
}

/** The elements of a constructed value, in order. */
function children(value: Uint8Array): Tlv[] {
  const out: Tlv[] = [];
  for (let at = 0; at < value.length;) {
    const tlv = readTlv(value, at);
    out.push(tlv);
    at = tlv.end;
  }
  return out;
}

const SEQUENCE = 0x30;
const OCTET_STRING = 0x04;
const OID = 0x06;
const BOOLEAN = 0x01;
const UTC_TIME = 0x17;
const GENERALIZED_TIME = 0x18;
const EXTENSIONS = 0xa3; // [3] EXPLICIT
const DNS_NAME = 0x82; // GeneralName [2] IMPLICIT IA5String
const SUBJECT_ALT_NAME = "55 1d 11"; // 2.5.29.17

function expect(tlv: Tlv | undefined, tag: number, what: string): Tlv {
  if (!tlv || tlv.tag !== tag) throw new NotServed(`the certificate's ${what} is malformed`);
  return tlv;
}

/** notBefore, notAfter and the DNS names of a DER certificate. */
export function parseCertificate(der: Uint8Array): LeafCertificate {
  const certificate = expect(readTlv(der, 0), SEQUENCE, "structure");
  const tbs = children(expect(children(certificate.value)[0], SEQUENCE, "body").value);
  // version [0] is optional (absent means v1); serial, signature, issuer, validity follow.
  const fields = tbs[0]?.tag === 0xa0 ? tbs.slice(1) : tbs;
  const validity = children(expect(fields[3], SEQUENCE, "validity").value);
  const names: string[] = [];
  const extensions = fields.slice(6).find((field) => field.tag === EXTENSIONS);
  if (extensions) {
    for (const extension of children(expect(children(extensions.value)[0], SEQUENCE, "extensions").value)) {
      const [id, ...rest] = children(expect(extension, SEQUENCE, "extension").value);
      if (hex(expect(id, OID, "extension id").value) !== SUBJECT_ALT_NAME) continue;
      const value = expect(rest[0]?.tag === BOOLEAN ? rest[1] : rest[0], OCTET_STRING, "subjectAltName");
      const generalNames = expect(readTlv(value.value, 0), SEQUENCE, "subjectAltName");
      for (const name of children(generalNames.value)) {
        if (name.tag === DNS_NAME) names.push(new TextDecoder().decode(name.value).toLowerCase());
      }
    }
  }
  return { notBefore: readTime(validity[0]), notAfter: readTime(validity[1]), names };
}

function hex(bytes: Uint8Array): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(" ");
}

/** UTCTime (YYMMDDHHMMSSZ, years 1950–2049) or GeneralizedTime (YYYYMMDDHHMMSSZ), as RFC 5280 requires. */
function readTime(tlv: Tlv | undefined): Date {
  const text = tlv ? new TextDecoder().decode(tlv.value) : "";
  const match = tlv?.tag === UTC_TIME
    ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text)
    : tlv?.tag === GENERALIZED_TIME
    ? /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text)
    : null;
  if (!match) throw new NotServed("the certificate's validity is malformed");
  const [year, month, day, hour, minute, second] = match.slice(1).map(Number);
  const fullYear = tlv!.tag === UTC_TIME ? (year < 50 ? 2000 + year : 1900 + year) : year;
  return new Date(Date.UTC(fullYear, month - 1, day, hour, minute, second));
}
