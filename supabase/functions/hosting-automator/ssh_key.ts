/**
 * Reads the SSH client key from its text (CLOUDPANEL_SSH_PRIVATE_KEY) into a dev-tunnels-ssh KeyPair.
 *
 * PEM keys (SEC1 "EC PRIVATE KEY", PKCS#1 "RSA PRIVATE KEY", PKCS#8 "PRIVATE KEY") go to
 * dev-tunnels-ssh-keys. That library has no reader for the OpenSSH format ("OPENSSH PRIVATE KEY", what
 * ssh-keygen writes by default), so unencrypted openssh-key-v1 ECDSA and RSA keys are parsed here and handed
 * over as key parameters.
 *
 * Unsupported keys fail with `ssh_auth_failed` and a public message that says what to use instead:
 * Ed25519 (the library has no Ed25519), ECDSA P-521 (Deno 2.1's Web Crypto cannot sign with it) and
 * passphrase-protected keys (there is nowhere to keep a passphrase). `privateKeyProblem` makes the same checks
 * of type and shape without importing, so the configuration refuses such a key when it is read.
 */
import { Buffer } from "node:buffer";
import { BigInt as SshBigInt, ECDsa, type KeyPair, SshAlgorithms } from "@microsoft/dev-tunnels-ssh";
import { importKey } from "@microsoft/dev-tunnels-ssh-keys";
import { HostingError } from "./errors.ts";

const USE_INSTEAD = "use an ECDSA (P-256 or P-384) or RSA key without a passphrase";

/**
 * Why a key cannot be used, as a rule that reads after the setting's name ("is an Ed25519 key, which is not
 * supported; …"). It names the structure that was wrong and never quotes the key.
 */
class KeyProblem extends Error {}

function unsupported(what: string): KeyProblem {
  return new KeyProblem(`is ${what}, which is not supported; ${USE_INSTEAD}`);
}

function unreadable(detail: string): KeyProblem {
  return new KeyProblem(`could not be read (${detail}); ${USE_INSTEAD}, in PEM or OpenSSH format`);
}

/** The curves Deno 2.1 can sign with, by their SSH name. */
const CURVES: Record<string, { oid: string; bytes: number }> = {
  nistp256: { oid: "1.2.840.10045.3.1.7", bytes: 32 },
  nistp384: { oid: "1.3.132.0.34", bytes: 48 },
};

// DER encodings of the OIDs that identify a key's algorithm and curve.
const OID_RSA = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384 = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519 = [0x06, 0x03, 0x2b, 0x65, 0x70];
const OID_ED448 = [0x06, 0x03, 0x2b, 0x65, 0x71];
const OID_P521 = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];

/** What a key's text holds, checked for type and shape, ready to be imported. */
type KeyPlan =
  | { kind: "pem"; block: string }
  | { kind: "ecdsa"; curveName: string; point: Buffer; d: Buffer }
  | { kind: "rsa"; n: Buffer; e: Buffer; d: Buffer; iqmp: Buffer; p: Buffer; q: Buffer };

/**
 * Why this key text cannot be used, as a rule after the setting's name; null when its type and shape are
 * right. Synchronous, so the configuration can refuse a wrong key when it is read, before any connection.
 */
export function privateKeyProblem(text: string): string | null {
  try {
    planKey(text);
    return null;
  } catch (error) {
    if (error instanceof KeyProblem) return error.message;
    throw error;
  }
}

/** Reads a private key in PEM or OpenSSH format; rejects with `ssh_auth_failed` when it cannot be used. */
export async function readPrivateKey(text: string): Promise<KeyPair> {
  let plan: KeyPlan;
  try {
    plan = planKey(text);
  } catch (error) {
    if (!(error instanceof KeyProblem)) throw error;
    const message = `CLOUDPANEL_SSH_PRIVATE_KEY ${error.message}.`;
    throw new HostingError("ssh_auth_failed", message, { publicMessage: message });
  }
  try {
    return await importPlan(plan);
  } catch (error) {
    // The library's words about a key that looked right: kept internal, the public text says what to use.
    const detail = error instanceof Error ? error.message : String(error);
    throw new HostingError(
      "ssh_auth_failed",
      `CLOUDPANEL_SSH_PRIVATE_KEY could not be read: ${detail}`.slice(0, 300),
      {
        publicMessage:
          `CLOUDPANEL_SSH_PRIVATE_KEY could not be read; ${USE_INSTEAD}, in PEM or OpenSSH format.`,
      },
    );
  }
}

function planKey(text: string): KeyPlan {
  const pem = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END \1-----/.exec(text);
  if (!pem) {
    throw unreadable("no PEM block, -----BEGIN … PRIVATE KEY----- to -----END … PRIVATE KEY-----, was found");
  }
  const [, label, body] = pem;
  if (/^Proc-Type:\s*4,ENCRYPTED/m.test(body) || label === "ENCRYPTED PRIVATE KEY") {
    throw unsupported("protected by a passphrase");
  }
  const base64 = body.replace(/^[A-Za-z-]+:.*$/gm, "").replace(/\s+/g, "");
  if (base64 === "" || !/^[A-Za-z0-9+/]+={0,2}$/.test(base64)) throw unreadable("its body is not base64");
  const der = Buffer.from(base64, "base64");

  if (label === "OPENSSH PRIVATE KEY") return openSshPlan(der);
  if (label !== "EC PRIVATE KEY" && label !== "RSA PRIVATE KEY" && label !== "PRIVATE KEY") {
    throw unsupported(`a "${label}" key`);
  }
  // A key is one DER SEQUENCE spanning the whole body, starting with its version (an INTEGER).
  const outer = derElement(der, 0);
  const version = outer && outer.tag === 0x30 && outer.end === der.length
    ? derElement(der, outer.start)
    : null;
  if (!version || version.tag !== 0x02) throw unreadable(`its ${label} body is not a DER-encoded key`);
  if (label === "RSA PRIVATE KEY") return { kind: "pem", block: pem[0] };

  let ec = label === "EC PRIVATE KEY";
  if (label === "PRIVATE KEY") {
    // PKCS#8: the version, then the algorithm's identifier, whose first element is the algorithm's OID.
    const algorithm = derElement(der, version.end);
    const oid = algorithm?.tag === 0x30 ? derElement(der, algorithm.start) : null;
    if (!algorithm || !oid || oid.tag !== 0x06) throw unreadable("its PRIVATE KEY body names no algorithm");
    const id = der.subarray(algorithm.start, oid.end);
    if (startsWith(id, OID_ED25519) || startsWith(id, OID_ED448)) {
      throw unsupported("an Ed25519 (or Ed448) key");
    }
    if (startsWith(id, OID_RSA)) return { kind: "pem", block: pem[0] };
    if (!startsWith(id, OID_EC)) throw unsupported("a key of an algorithm other than ECDSA and RSA");
    ec = true;
  }
  if (ec) {
    // The curve's identifier sits near the start of SEC1 and PKCS#8 keys; looking only there keeps random key
    // bytes from matching.
    const head = der.subarray(0, 100);
    if (contains(head, OID_P521)) throw unsupported("an ECDSA P-521 key");
    if (!contains(head, OID_P256) && !contains(head, OID_P384)) {
      throw unsupported("an ECDSA key on a curve other than P-256 and P-384");
    }
  }
  return { kind: "pem", block: pem[0] };
}

async function importPlan(plan: KeyPlan): Promise<KeyPair> {
  switch (plan.kind) {
    case "pem": {
      const key = await importKey(plan.block);
      if (!key.hasPrivateKey) throw new Error("the key has no private part");
      return key;
    }
    case "ecdsa": {
      const curve = CURVES[plan.curveName];
      const key = new ECDsa.KeyPair();
      await key.importParameters({
        curve: { name: plan.curveName, oid: curve.oid },
        x: unsigned(plan.point.subarray(1, 1 + curve.bytes)),
        y: unsigned(plan.point.subarray(1 + curve.bytes)),
        d: unsigned(plan.d),
      });
      return key;
    }
    case "rsa": {
      // Web Crypto wants the CRT exponents, which the OpenSSH format leaves out.
      const dBig = toBig(plan.d), pBig = toBig(plan.p), qBig = toBig(plan.q);
      const key = SshAlgorithms.publicKey.rsaWithSha512!.createKeyPair();
      await key.importParameters({
        modulus: unsigned(plan.n),
        exponent: unsigned(plan.e),
        d: unsigned(plan.d),
        p: unsigned(plan.p),
        q: unsigned(plan.q),
        dp: unsigned(fromBig(dBig % (pBig - 1n))),
        dq: unsigned(fromBig(dBig % (qBig - 1n))),
        qi: unsigned(plan.iqmp),
      });
      return key;
    }
  }
}

/** One DER element: its tag and where its content starts and ends; null when the bytes do not hold one. */
function derElement(der: Uint8Array, at: number): { tag: number; start: number; end: number } | null {
  if (at + 2 > der.length) return null;
  let length = der[at + 1];
  let start = at + 2;
  if (length & 0x80) {
    const octets = length & 0x7f;
    if (octets === 0 || octets > 4 || start + octets > der.length) return null;
    length = 0;
    for (let i = 0; i < octets; i++) length = length * 256 + der[start + i];
    start += octets;
  }
  return start + length <= der.length ? { tag: der[at], start, end: start + length } : null;
}

function startsWith(bytes: Uint8Array, prefix: number[]): boolean {
  return prefix.length <= bytes.length && prefix.every((b, i) => bytes[i] === b);
}

function contains(haystack: Uint8Array, needle: number[]): boolean {
  for (let i = 0; i + needle.length <= haystack.length; i++) {
    if (startsWith(haystack.subarray(i), needle)) return true;
  }
  return false;
}

const MAGIC = "openssh-key-v1\0";

/** openssh-key-v1 (PROTOCOL.key in the OpenSSH sources), unencrypted, one ECDSA or RSA key. */
function openSshPlan(data: Buffer): KeyPlan {
  if (data.subarray(0, MAGIC.length).toString("latin1") !== MAGIC) {
    throw unreadable("OPENSSH PRIVATE KEY without the openssh-key-v1 header");
  }
  const r = new Reader(data.subarray(MAGIC.length));
  const cipher = r.text();
  r.text(); // kdf name
  r.bytes(); // kdf options
  if (cipher !== "none") throw unsupported("protected by a passphrase");
  if (r.uint32() !== 1) throw unreadable("OPENSSH PRIVATE KEY holding more than one key");
  r.bytes(); // public key; the private section repeats what we need
  const p = new Reader(r.bytes());
  if (p.uint32() !== p.uint32()) throw unreadable("OPENSSH PRIVATE KEY check bytes differ");

  const type = p.text();
  if (type.startsWith("ecdsa-sha2-")) {
    const curveName = p.text();
    const point = p.bytes();
    const d = p.mpint();
    if (curveName === "nistp521") throw unsupported("an ECDSA P-521 key");
    const curve = CURVES[curveName];
    if (!curve) throw unsupported("an ECDSA key on a curve other than P-256 and P-384");
    if (point.length !== 1 + 2 * curve.bytes || point[0] !== 0x04) {
      throw unreadable("OPENSSH PRIVATE KEY with a malformed ECDSA public point");
    }
    return { kind: "ecdsa", curveName, point, d };
  }
  if (type === "ssh-rsa") {
    const [n, e, d, iqmp, p1, q1] = [p.mpint(), p.mpint(), p.mpint(), p.mpint(), p.mpint(), p.mpint()];
    return { kind: "rsa", n, e, d, iqmp, p: p1, q: q1 };
  }
  if (type === "ssh-ed25519") throw unsupported("an Ed25519 key");
  if (type.startsWith("sk-")) throw unsupported("a security-key (sk-) key");
  throw unsupported(`a "${type.replace(/[^\x20-\x7e]/g, "?").slice(0, 40)}" key`);
}

function unsigned(bytes: Uint8Array): SshBigInt {
  return SshBigInt.fromBytes(Buffer.from(bytes), { unsigned: true });
}

function toBig(bytes: Uint8Array): bigint {
  return bytes.length === 0 ? 0n : globalThis.BigInt("0x" + Buffer.from(bytes).toString("hex"));
}

function fromBig(value: bigint): Uint8Array {
  const hex = value.toString(16);
  return Buffer.from(hex.length % 2 ? "0" + hex : hex, "hex");
}

/** SSH wire-format reader (RFC 4251 §5) over one buffer; overruns are malformed keys. */
class Reader {
  #data: Buffer;
  #at = 0;
  constructor(data: Buffer) {
    this.#data = data;
  }
  uint32(): number {
    if (this.#at + 4 > this.#data.length) throw unreadable("OPENSSH PRIVATE KEY is truncated");
    const value = this.#data.readUInt32BE(this.#at);
    this.#at += 4;
    return value;
  }
  bytes(): Buffer {
    const length = this.uint32();
    if (this.#at + length > this.#data.length) throw unreadable("OPENSSH PRIVATE KEY is truncated");
    const value = this.#data.subarray(this.#at, this.#at + length);
    this.#at += length;
    return value;
  }
  text(): string {
    return this.bytes().toString("latin1");
  }
  /** A non-negative mpint without its sign byte. */
  mpint(): Buffer {
    const value = this.bytes();
    let start = 0;
    while (start < value.length - 1 && value[start] === 0) start++;
    return value.subarray(start);
  }
}
