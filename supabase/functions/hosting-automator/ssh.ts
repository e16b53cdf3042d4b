/**
 * The SSH transport: one connection to the CloudPanel server per invocation, reused for every command.
 *
 * Built on dev-tunnels-ssh because it runs on the hosted runtime's Deno 2.1, where ssh2 fails on its first
 * encrypted packet (docs/architecture.md §15.5). The TCP socket is Deno's own (`Deno.connect`), so every
 * resource is closed by this module and Deno's test sanitizers can check that.
 *
 * Order of a connection: TCP → key exchange → the server's host key is compared with the pinned fingerprint
 * (a mismatch closes the session before the client authenticates, so nothing can run) → public-key
 * authentication → exec channels, one per command.
 */
import { Buffer } from "node:buffer";
import {
  BaseStream,
  ChannelMessage,
  ChannelOpenMessage,
  ChannelRequestMessage,
  CommandRequestMessage,
  type KeyPair,
  ObjectDisposedError,
  PromiseCompletionSource,
  SshAlgorithms,
  SshAuthenticationType,
  type SshChannel,
  type SshChannelClosedEventArgs,
  SshChannelError,
  SshClientSession,
  SshConnectionError,
  type SshDataWriter,
  SshDisconnectReason,
  SshExtendedDataType,
  SshSessionConfiguration,
  TraceLevel,
} from "@microsoft/dev-tunnels-ssh";
import type { SshConfig } from "./config.ts";
import { HostingError, isHostingError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { ExecResult, RemoteShell } from "./remote.ts";
import { readPrivateKey } from "./ssh_key.ts";

export interface ConnectOptions {
  logger?: Logger;
  /** Aborts connecting; the reason is rethrown when it is a HostingError, else `interrupted`. */
  signal?: AbortSignal;
}

/**
 * Channels open at once; further commands queue. Below OpenSSH's default MaxSessions (10) because sshd
 * frees a session a little after its close, and a refused open costs a retry.
 */
const MAX_CHANNELS = 8;
/** Output kept per stream; CloudPanel answers in a few lines, this only bounds memory. */
const MAX_OUTPUT_BYTES = 1024 * 1024;
/** How long close() waits for the goodbye message before it drops the socket. */
const CLOSE_GRACE_MS = 2000;
/** setTimeout fires at once for longer delays. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export async function connectSsh(config: SshConfig, options: ConnectOptions = {}): Promise<RemoteShell> {
  const where = `${config.host}:${config.port}`;
  const started = performance.now();
  // Before any network traffic: an unusable key is a configuration error, not an unreachable server.
  const key = await readPrivateKey(config.privateKey);
  const limit = new Limit(config.connectTimeoutMs, options.signal, `connecting to ${where}`);
  try {
    let connection: Connection;
    try {
      connection = await handshake(config, key, "ecdsa", limit);
    } catch (e) {
      // The pinned fingerprint may be of the server's RSA host key: OpenSSH servers have one of each, and
      // the ECDSA one is tried first. A second handshake that prefers RSA settles it; both are strict.
      if (!(e instanceof HostKeyMismatch) || !e.algorithm.startsWith("ecdsa-")) throw e;
      try {
        connection = await handshake(config, key, "rsa", limit);
      } catch (second) {
        if (second instanceof HostKeyMismatch) throw mismatchError(where, [e, second]);
        throw second;
      }
    }
    options.logger?.info("ssh connected", {
      host: config.host,
      port: config.port,
      user: config.user,
      host_key_algorithm: connection.hostKeyAlgorithm,
      duration_ms: Math.round(performance.now() - started),
    });
    return new SshShell(connection, where, options.logger);
  } catch (e) {
    if (e instanceof HostKeyMismatch) throw mismatchError(where, [e]);
    throw e;
  } finally {
    limit.dispose();
  }
}

/** OpenSSH's fingerprint: SHA-256 over the public key blob, base64 without padding (`ssh-keygen -l`). */
export async function fingerprintOf(key: KeyPair): Promise<string> {
  const blob = await key.getPublicKeyBytes(key.keyAlgorithmName);
  if (!blob) throw new Error("the key has no public part");
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", blob));
  return "SHA256:" + Buffer.from(digest).toString("base64").replace(/=+$/, "");
}

/** Compares two `SHA256:` fingerprints in time that does not depend on where they differ. */
export function sameFingerprint(a: string, b: string): boolean {
  const norm = (s: string) => new TextEncoder().encode(s.trim().replace(/^SHA256:/, "").replace(/=+$/, ""));
  const x = norm(a), y = norm(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

// ---------------------------------------------------------------------------------------------------------
// Connecting

interface Connection {
  session: SshClientSession;
  stream: TcpStream;
  hostKeyAlgorithm: string;
}

class HostKeyMismatch extends Error {
  constructor(readonly algorithm: string, readonly presented: string) {
    super(`the server presented ${algorithm} host key ${presented}`);
  }
}

function mismatchError(where: string, seen: HostKeyMismatch[]): HostingError {
  const keys = [...new Set(seen.map((m) => `${m.algorithm} ${m.presented}`))].join(", ");
  return new HostingError(
    "ssh_host_key_mismatch",
    `${where}: the host key does not match the pinned one (the server presented ${keys}); ` +
      "pin the fingerprint of its ECDSA or RSA host key (Ed25519 host keys cannot be used)",
  );
}

function sessionConfig(prefer: "ecdsa" | "rsa"): SshSessionConfiguration {
  const config = new SshSessionConfiguration();
  const pk = SshAlgorithms.publicKey;
  // Host key preference; no P-521, which Deno 2.1's Web Crypto cannot verify. The same list serves the
  // client key, where the first RSA entry (rsa-sha2-512) signs for RSA keys.
  const ecdsa = [pk.ecdsaSha2Nistp256, pk.ecdsaSha2Nistp384];
  const rsa = [pk.rsaWithSha512, pk.rsaWithSha256];
  config.publicKeyAlgorithms.splice(
    0,
    Infinity,
    ...(prefer === "ecdsa" ? [...ecdsa, ...rsa] : [...rsa, ...ecdsa]),
  );
  config.authenticationMethods.splice(0, Infinity, "publickey" as (typeof config.authenticationMethods)[0]);
  return config;
}

async function handshake(
  config: SshConfig,
  key: KeyPair,
  prefer: "ecdsa" | "rsa",
  limit: Limit,
): Promise<Connection> {
  const where = `${config.host}:${config.port}`;
  const conn = await limit.race(
    openTcp(config.host, config.port),
    (late) => late.then((c) => c.close(), () => {}),
  );
  const stream = new TcpStream(conn);
  const session = new SshClientSession(sessionConfig(prefer));
  let presented: { algorithm: string; fingerprint: string } | undefined;

  session.onAuthenticating((event) => {
    if (event.authenticationType !== SshAuthenticationType.serverPublicKey || !event.publicKey) return;
    const hostKey = event.publicKey;
    event.authenticationPromise = (async () => {
      try {
        presented = { algorithm: hostKey.keyAlgorithmName, fingerprint: await fingerprintOf(hostKey) };
      } catch {
        return null;
      }
      // A null principal makes the library disconnect with "host key not verifiable".
      return sameFingerprint(presented.fingerprint, config.hostKey) ? { host: config.host } : null;
    })();
  });

  try {
    await limit.race(session.connect(stream));
    if (!(await limit.race(session.authenticateServer()))) {
      throw new HostKeyMismatch(presented?.algorithm ?? "unknown", presented?.fingerprint ?? "(unreadable)");
    }
    const accepted = await limit.race(
      session.authenticateClient({ username: config.user, publicKeys: [key] }),
    );
    if (!accepted) {
      throw new HostingError(
        "ssh_auth_failed",
        `${where}: the server refused the ${key.keyAlgorithmName} key ${await fingerprintOf(key)} ` +
          `for user ${config.user}`,
      );
    }
    return { session, stream, hostKeyAlgorithm: presented?.algorithm ?? "unknown" };
  } catch (e) {
    session.dispose();
    stream.dispose();
    await stream.finished;
    if (e instanceof HostKeyMismatch || isHostingError(e)) throw e;
    if (e instanceof SshConnectionError && e.reason === SshDisconnectReason.hostKeyNotVerifiable) {
      // The host key's signature over the exchange did not verify: not the server we pinned.
      throw new HostingError("ssh_host_key_mismatch", `${where}: ${e.message}`, { cause: e });
    }
    throw new HostingError("ssh_unreachable", `${where}: SSH handshake failed: ${describe(e)}`, { cause: e });
  }
}

async function openTcp(hostname: string, port: number): Promise<Deno.TcpConn> {
  try {
    const conn = await Deno.connect({ hostname, port, transport: "tcp" });
    conn.setNoDelay(true);
    return conn;
  } catch (e) {
    // Refused, reset, unroutable or a name that does not resolve: all may heal, all are retried.
    throw new HostingError("ssh_unreachable", `${hostname}:${port}: ${describe(e)}`, { cause: e });
  }
}

// ---------------------------------------------------------------------------------------------------------
// The shell: exec channels over the one session

class SshShell implements RemoteShell {
  readonly #session: SshClientSession;
  readonly #stream: TcpStream;
  readonly #where: string;
  readonly #logger?: Logger;
  readonly #slots = new Slots(MAX_CHANNELS);
  #closing?: Promise<void>;
  #lost?: string;

  constructor(connection: Connection, where: string, logger?: Logger) {
    this.#session = connection.session;
    this.#stream = connection.stream;
    this.#where = where;
    this.#logger = logger;
    this.#session.onClosed((event) => {
      this.#lost ??= event.message || "the connection closed";
    });
    this.#session.trace = (level, _id, message) => {
      if (level === TraceLevel.Error || level === TraceLevel.Warning) {
        this.#logger?.debug("ssh library", { level, detail: message });
      }
    };
  }

  async exec(command: string, options: { timeoutMs: number; signal?: AbortSignal }): Promise<ExecResult> {
    if (this.#closing || this.#lost !== undefined || this.#session.isClosed) {
      const why = this.#closing ? "close() was called" : this.#lost ?? "the session ended";
      throw new HostingError("ssh_unreachable", `${this.#where}: the SSH connection is closed: ${why}`);
    }
    const started = performance.now();
    const limit = new Limit(options.timeoutMs, options.signal, `a command on ${this.#where}`);
    const slot = this.#slots.take();
    const run: RunState = { cancelled: false };
    try {
      await limit.race(slot.ready);
      const result = await limit.race(this.#run(command, run));
      this.#logger?.debug("ssh exec finished", {
        exit_code: result.exitCode,
        ...(result.signal ? { signal: result.signal } : {}),
        stdout_bytes: result.stdout.length,
        stderr_bytes: result.stderr.length,
        duration_ms: Math.round(performance.now() - started),
      });
      return result;
    } catch (e) {
      if (limit.tripped) {
        run.cancelled = true;
        run.wake?.();
        if (run.channel) abandon(run.channel);
      }
      throw e;
    } finally {
      limit.dispose();
      slot.release();
    }
  }

  async #run(command: string, run: RunState): Promise<ExecResult> {
    let channel: SshChannel;
    for (let pause = 20;; pause = Math.min(pause * 2, 500)) {
      try {
        channel = await openSessionChannel(this.#session);
        break;
      } catch (e) {
        // sshd refuses a channel while all its sessions (MaxSessions) are taken, including ones whose close
        // it has not processed yet: wait and ask again, within the command's time limit.
        if (!(e instanceof SshChannelError) || this.#session.isClosed || run.cancelled) {
          throw this.#channelError("could not open a channel", e);
        }
        this.#logger?.debug("ssh channel refused, retrying", { detail: e.message, retry_ms: pause });
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, pause);
          run.wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        run.wake = undefined;
      }
    }
    if (run.cancelled) {
      abandon(channel);
      throw new HostingError("ssh_timeout", `${this.#where}: cancelled while opening a channel`);
    }
    run.channel = channel;

    const stdout = new Collector(), stderr = new Collector();
    // The library leaves flow control to the reader: every byte consumed is handed back to the window.
    channel.onDataReceived((data) => {
      stdout.push(data);
      channel.adjustWindow(data.length);
    });
    channel.onExtendedDataReceived((event) => {
      if (event.dataTypeCode === SshExtendedDataType.STDERR) stderr.push(event.data);
      channel.adjustWindow(event.data.length);
    });
    const closed = new Promise<SshChannelClosedEventArgs>((resolve) => channel.onClosed(resolve));

    const request = new CommandRequestMessage();
    request.command = command;
    request.wantReply = true;
    let accepted: boolean;
    try {
      accepted = await channel.request(request);
    } catch (e) {
      throw this.#channelError("the command could not be sent", e);
    }
    if (!accepted) {
      if (this.#session.isClosed) throw this.#channelError("the connection closed", undefined);
      abandon(channel);
      throw new HostingError("internal", `${this.#where}: the server refused to run the command`);
    }
    // Nothing is ever written to the command's stdin: end it, so commands that read it do not wait.
    await channel.send(Buffer.alloc(0)).catch(() => {});

    const end = await closed;
    if (end.error) throw this.#channelError("the connection was lost while the command ran", end.error);
    if (!run.cancelled) {
      // The library does not answer the server's CHANNEL_CLOSE (RFC 4254 §5.3 says it must). sshd frees a
      // session only when both sides have closed, so without this reply the eleventh command on one
      // connection is refused with "no more sessions" (MaxSessions 10).
      const reply = new ChannelCloseMessage();
      reply.recipientChannel = channel.remoteChannelId;
      await this.#session.sendMessage(reply).catch(() => {});
    }
    // sshd sends exit-status when the command exited, exit-signal when a signal ended it, neither when the
    // session was torn down under it.
    const result: ExecResult = {
      stdout: stdout.text(),
      stderr: stderr.text(),
      exitCode: typeof end.exitStatus === "number" ? end.exitStatus : null,
    };
    if (result.exitCode === null && end.exitSignal) result.signal = end.exitSignal.replace(/^SIG/, "");
    return result;
  }

  #channelError(what: string, cause: unknown): HostingError {
    if (isHostingError(cause)) return cause;
    const detail = cause === undefined ? "" : `: ${describe(cause)}`;
    return new HostingError("ssh_unreachable", `${this.#where}: ${what}${detail}`, { cause });
  }

  close(): Promise<void> {
    return this.#closing ??= this.#shutdown();
  }

  async #shutdown(): Promise<void> {
    const goodbye = this.#session.close(SshDisconnectReason.byApplication, "done").catch(() => {});
    await bounded(goodbye, CLOSE_GRACE_MS);
    this.#session.dispose();
    this.#stream.dispose();
    await this.#stream.finished;
    this.#logger?.debug("ssh closed", { host: this.#where });
  }
}

interface RunState {
  cancelled: boolean;
  channel?: SshChannel;
  /** Ends a pause between channel-open attempts. */
  wake?: () => void;
}

interface ChannelOpener {
  openChannel(message: ChannelOpenMessage, completion: PromiseCompletionSource<SshChannel>): Promise<number>;
}

/**
 * Opens a "session" channel the way SshSession.openChannel does, but with its completion observed from the
 * start: the library rejects it when the connection closes while the open request is still being written,
 * before anyone awaits it, and that unhandled rejection would end the worker.
 */
async function openSessionChannel(session: SshClientSession): Promise<SshChannel> {
  const service = (session as unknown as { connectionService: ChannelOpener | null }).connectionService;
  if (!service || session.isClosed) throw new ObjectDisposedError(session);
  const message = new ChannelOpenMessage();
  message.channelType = "session";
  const completion = new PromiseCompletionSource<SshChannel>();
  completion.promise.catch(() => {});
  await service.openChannel(message, completion);
  return await completion.promise;
}

/** Stops a command we no longer wait for: ask the server to kill it, then close its channel. */
function abandon(channel: SshChannel): void {
  if (channel.isClosed) return;
  // sshd honours "signal" only for sessions without a forced command; elsewhere the command runs to its end.
  channel.request(new SignalRequest("KILL"))
    .catch(() => false)
    .then(() => channel.close())
    .catch(() => {});
}

/** RFC 4254 §5.3 channel close; the library's own message class is not exported. */
class ChannelCloseMessage extends ChannelMessage {
  override get messageType(): number {
    return 97;
  }
}

/** RFC 4254 §6.9 "signal"; the library's own signal message is not exported. */
class SignalRequest extends ChannelRequestMessage {
  constructor(readonly signal: string) {
    super("signal", false);
  }
  protected override onWrite(writer: SshDataWriter): void {
    super.onWrite(writer);
    writer.writeString(this.signal, "ascii");
  }
}

/** UTF-8 text of one output stream, decoded as it arrives, bounded in size. */
class Collector {
  #decoder = new TextDecoder();
  #parts: string[] = [];
  #bytes = 0;
  push(data: Uint8Array): void {
    if (this.#bytes >= MAX_OUTPUT_BYTES) return;
    const take = data.subarray(0, MAX_OUTPUT_BYTES - this.#bytes);
    this.#bytes += take.length;
    // Decode now: the library may reuse the buffer once the handler returns.
    this.#parts.push(this.#decoder.decode(take, { stream: true }));
  }
  text(): string {
    return this.#parts.join("") + this.#decoder.decode();
  }
}

/** A counting semaphore whose waiters can withdraw. */
class Slots {
  #free: number;
  #waiting: Array<() => void> = [];
  constructor(size: number) {
    this.#free = size;
  }
  take(): { ready: Promise<void>; release(): void } {
    let granted = false, released = false;
    let wake!: () => void;
    const ready = new Promise<void>((resolve) => {
      wake = () => {
        granted = true;
        resolve();
      };
    });
    if (this.#free > 0) {
      this.#free--;
      wake();
    } else {
      this.#waiting.push(wake);
    }
    return {
      ready,
      release: () => {
        if (released) return;
        released = true;
        if (!granted) {
          this.#waiting.splice(this.#waiting.indexOf(wake), 1);
          return;
        }
        const next = this.#waiting.shift();
        if (next) next();
        else this.#free++;
      },
    };
  }
}

// ---------------------------------------------------------------------------------------------------------
// Time limits and the socket

/**
 * A deadline plus an optional abort signal. `race` settles with the first of the work or the limit; work
 * that loses keeps running and is handed to `late` (or silenced) so its rejection is never unhandled.
 */
class Limit {
  tripped: HostingError | undefined;
  readonly #trip: Promise<never>;
  readonly #timer: number;
  readonly #signal?: AbortSignal;
  readonly #onAbort: () => void;

  constructor(ms: number, signal: AbortSignal | undefined, what: string) {
    let reject!: (e: HostingError) => void;
    this.#trip = new Promise<never>((_, r) => (reject = r));
    this.#trip.catch(() => {});
    const fire = (e: HostingError) => {
      if (this.tripped) return;
      this.tripped = e;
      reject(e);
    };
    this.#timer = setTimeout(
      () => fire(new HostingError("ssh_timeout", `${what}: no answer in ${ms} ms`)),
      Math.min(ms, MAX_TIMER_MS),
    );
    this.#signal = signal;
    this.#onAbort = () => fire(abortError(signal!.reason, what));
    if (signal?.aborted) this.#onAbort();
    else signal?.addEventListener("abort", this.#onAbort, { once: true });
  }

  race<T>(work: Promise<T>, late: (work: Promise<T>) => void = (w) => void w.catch(() => {})): Promise<T> {
    if (this.tripped) {
      late(work);
      return this.#trip;
    }
    return Promise.race([work, this.#trip]).catch((e) => {
      if (this.tripped) late(work);
      throw e;
    });
  }

  dispose(): void {
    clearTimeout(this.#timer);
    this.#signal?.removeEventListener("abort", this.#onAbort);
  }
}

function abortError(reason: unknown, what: string): HostingError {
  if (isHostingError(reason)) return reason;
  return new HostingError("interrupted", `${what}: aborted (${describe(reason)})`, { cause: reason });
}

/** Waits for `work` at most `ms`, without leaving a timer behind. */
async function bounded(work: Promise<unknown>, ms: number): Promise<void> {
  let timer: number | undefined;
  await Promise.race([work, new Promise((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}

function describe(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}

/** dev-tunnels-ssh's stream interface over a Deno TCP connection. */
class TcpStream extends BaseStream {
  /** Settles when the socket is closed and its reader has stopped. */
  readonly finished: Promise<void>;
  readonly #conn: Deno.TcpConn;
  #shut = false;
  #writes: Promise<void> = Promise.resolve();

  constructor(conn: Deno.TcpConn) {
    super();
    this.#conn = conn;
    this.finished = this.#pump();
  }

  async #pump(): Promise<void> {
    const reader = this.#conn.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this.onData(Buffer.from(value.buffer, value.byteOffset, value.byteLength));
      }
      this.onEnd();
    } catch (e) {
      // Closing the socket under a pending read rejects it; that is our own close, not a failure.
      if (this.#shut) this.onEnd();
      else this.onError(e instanceof Error ? e : new Error(String(e)));
    } finally {
      reader.releaseLock();
      this.#close();
    }
    this.fireOnClose();
  }

  override write(data: Buffer): Promise<void> {
    if (this.disposed || this.#shut) return Promise.reject(new ObjectDisposedError(this));
    // One write at a time, in order, each written fully.
    const next = this.#writes.then(async () => {
      for (let at = 0; at < data.length;) at += await this.#conn.write(data.subarray(at));
    });
    this.#writes = next.catch(() => {});
    return next;
  }

  override async close(): Promise<void> {
    this.#close();
    this.disposed = true;
    await this.finished;
  }

  override dispose(): void {
    this.#close();
    super.dispose();
  }

  #close(): void {
    if (this.#shut) return;
    this.#shut = true;
    try {
      this.#conn.close();
    } catch {
      // Already closed by the other side.
    }
  }
}
