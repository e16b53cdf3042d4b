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
 * passphrase-protected keys (there is nowhere to keep a passphrase).
 */
import { Buffer } from "node:buffer";
import { BigInt as SshBigInt, ECDsa, type KeyPair, SshAlgorithms } from "@microsoft/dev-tunnels-ssh";
import { importKey } from "@microsoft/dev-tunnels-ssh-keys";
import { HostingError } from "./errors.ts";

const USE_INSTEAD = "use an ECDSA (P-256 or P-384) or RSA key without a passphrase";

/** A key this transport cannot use, with a message that is safe to show and says what to do. */
function unsupported(what: string): HostingError {
  const text = `CLOUDPANEL_SSH_PRIVATE_KEY is ${what}, which is not supported; ${USE_INSTEAD}.`;
  return new HostingError("ssh_auth_failed", text, { publicMessage: text });
}

function unreadable(detail: string): HostingError {
  // The detail never quotes the key: it names the structure that was wrong.
  return new HostingError("ssh_auth_failed", `CLOUDPANEL_SSH_PRIVATE_KEY could not be read: ${detail}`, {
    publicMessage: `CLOUDPANEL_SSH_PRIVATE_KEY could not be read; ${USE_INSTEAD}, in PEM or OpenSSH format.`,
  });
}

/** The curves Deno 2.1 can sign with, by their SSH name. */
const CURVES: Record<string, { oid: string; bytes: number }> = {
  nistp256: { oid: "1.2.840.10045.3.1.7", bytes: 32 },
  nistp384: { oid: "1.3.132.0.34", bytes: 48 },
};

// DER encodings of the OIDs that identify keys we refuse, to name them in the error.
const OID_ED25519 = [0x06, 0x03, 0x2b, 0x65, 0x70];
const OID_ED448 = [0x06, 0x03, 0x2b, 0x65, 0x71];
const OID_P521 = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];

/** Reads a private key in PEM or OpenSSH format; rejects with `ssh_auth_failed` when it cannot be used. */
export async function readPrivateKey(text: string): Promise<KeyPair> {
  const pem = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END \1-----/.exec(text);
  if (!pem) throw unreadable("no PEM block (-----BEGIN ... PRIVATE KEY-----) was found");
  const [, label, body] = pem;
  if (/^Proc-Type:\s*4,ENCRYPTED/m.test(body) || label === "ENCRYPTED PRIVATE KEY") {
    throw unsupported("protected by a passphrase");
  }
  const der = Buffer.from(body.replace(/^[A-Za-z-]+:.*$/gm, "").replace(/\s+/g, ""), "base64");

  if (label === "OPENSSH PRIVATE KEY") return await fromOpenSsh(der);
  if (label !== "EC PRIVATE KEY" && label !== "RSA PRIVATE KEY" && label !== "PRIVATE KEY") {
    throw unsupported(`a "${label}" key`);
  }
  // The algorithm and curve identifiers sit near the start of SEC1 and PKCS#8 keys; looking only there keeps
  // random key bytes from matching.
  const head = label === "RSA PRIVATE KEY" ? new Uint8Array() : der.subarray(0, 100);
  if (contains(head, OID_ED25519) || contains(head, OID_ED448)) {
    throw unsupported("an Ed25519 (or Ed448) key");
  }
  if (contains(head, OID_P521)) throw unsupported("an ECDSA P-521 key");
  try {
    const key = await importKey(text.slice(pem.index, pem.index + pem[0].length));
    if (!key.hasPrivateKey) throw new Error("the key has no private part");
    return key;
  } catch (e) {
    throw unreadable(`${label}: ${e instanceof Error ? e.message : String(e)}`.slice(0, 200));
  }
}

function contains(haystack: Uint8Array, needle: number[]): boolean {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return true;
  }
  return false;
}

const MAGIC = "openssh-key-v1\0";

/** openssh-key-v1 (PROTOCOL.key in the OpenSSH sources), unencrypted, one ECDSA or RSA key. */
async function fromOpenSsh(data: Buffer): Promise<KeyPair> {
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
    if (!curve) throw unsupported(`an ECDSA key on curve ${curveName}`);
    if (point.length !== 1 + 2 * curve.bytes || point[0] !== 0x04) {
      throw unreadable("OPENSSH PRIVATE KEY with a malformed ECDSA public point");
    }
    const key = new ECDsa.KeyPair();
    await importParameters(key, {
      curve: { name: curveName, oid: curve.oid },
      x: unsigned(point.subarray(1, 1 + curve.bytes)),
      y: unsigned(point.subarray(1 + curve.bytes)),
      d: unsigned(d),
    });
    return key;
  }
  if (type === "ssh-rsa") {
    const [n, e, d, iqmp, p1, q1] = [p.mpint(), p.mpint(), p.mpint(), p.mpint(), p.mpint(), p.mpint()];
    // Web Crypto wants the CRT exponents, which the OpenSSH format leaves out.
    const dBig = toBig(d), pBig = toBig(p1), qBig = toBig(q1);
    const key = SshAlgorithms.publicKey.rsaWithSha512!.createKeyPair();
    await importParameters(key, {
      modulus: unsigned(n),
      exponent: unsigned(e),
      d: unsigned(d),
      p: unsigned(p1),
      q: unsigned(q1),
      dp: unsigned(fromBig(dBig % (pBig - 1n))),
      dq: unsigned(fromBig(dBig % (qBig - 1n))),
      qi: unsigned(iqmp),
    });
    return key;
  }
  if (type === "ssh-ed25519") throw unsupported("an Ed25519 key");
  if (type.startsWith("sk-")) throw unsupported("a security-key (sk-) key");
  throw unsupported(`a "${type}" key`);
}

async function importParameters(key: KeyPair, parameters: object): Promise<void> {
  try {
    await key.importParameters(parameters);
  } catch (e) {
    throw unreadable(`OPENSSH PRIVATE KEY: ${e instanceof Error ? e.message : String(e)}`.slice(0, 200));
  }
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
