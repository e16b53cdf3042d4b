/**
 * Test support: a real OpenSSH sshd on loopback, one per test, and throwaway client keys.
 *
 * Each sshd gets its own temp dir with an ECDSA host key, sshd_config, authorized_keys, pid file and log, and
 * listens on a free 127.0.0.1 port. It runs in the foreground as a child of the test (`-D`), logging to
 * `logPath` (`-e -E`); `stop()` ends it, the sessions it forked, and removes the dir.
 *
 * Environment for commands: `env` becomes a single `SetEnv` line in sshd_config. OpenSSH 9.2 applies SetEnv
 * to every session, exec and forced command alike, after its own defaults, so it also replaces PATH (verified
 * with this module's tests). Only the first SetEnv line counts, hence one line for all variables. HOME is an
 * empty directory of the server's own, so the login shell (`bash -c` from sshd reads ~/.bashrc) finds none of
 * the machine's rc files.
 *
 * Works as root, as CI runs it (Debian 12, openssh-server from apt): root may log in by key only
 * (`prohibit-password`), or only with the forced command when one is given (`forced-commands-only`).
 */

export interface SshdOptions {
  /** A public key line as in authorized_keys: `ecdsa-sha2-nistp256 AAAA... comment`. */
  authorizedKey: string;
  /** When set, the key may only run this command (`restrict,command="..."`); the client's command is in
   * `$SSH_ORIGINAL_COMMAND`. */
  forcedCommand?: string;
  /** Variables for every command the server runs (PATH included). */
  env?: Record<string, string>;
  /** More sshd_config lines, e.g. `Banner /path` or `LogLevel DEBUG3`; they take precedence over the
   * defaults written here. */
  extraConfig?: string[];
}

export interface Sshd {
  host: string;
  port: number;
  /** The user the key logs in as: the one running the tests (root in CI). */
  user: string;
  /** The host key's fingerprint as `ssh-keygen -l` prints it: `SHA256:...`. */
  hostKeyFingerprint: string;
  dir: string;
  logPath: string;
  /**
   * Takes the server down as a crash or reboot would: the listener and every session it forked (their
   * commands included) are killed, so open connections drop and new ones are refused until `up()`.
   */
  down(): Promise<void>;
  /** Starts sshd again with the same port, host key and configuration; resolves once it answers. */
  up(): Promise<void>;
  stop(): Promise<void>;
}

const SSHD = "/usr/sbin/sshd";
const READY_TIMEOUT_MS = 5000;

export async function startSshd(options: SshdOptions): Promise<Sshd> {
  const keyLine = options.authorizedKey.trim();
  if (!/^(ssh|ecdsa|sk)-\S+ [A-Za-z0-9+/=]+( .*)?$/.test(keyLine) || keyLine.includes("\n")) {
    throw new Error("startSshd: authorizedKey must be one public key line (type, base64, optional comment)");
  }
  if (options.forcedCommand !== undefined && /[\r\n\0]/.test(options.forcedCommand)) {
    throw new Error("startSshd: forcedCommand must be one line");
  }

  // Debian's sshd refuses to start without its privilege-separation directory.
  await Deno.mkdir("/run/sshd", { recursive: true, mode: 0o755 });
  const dir = await Deno.makeTempDir({ prefix: "hosting-automator-sshd-" });
  try {
    if (/[\s"'\\%]/.test(dir)) throw new Error(`startSshd: unusable temp dir ${dir}`);
    // The login shell reads rc files from HOME (bash under sshd reads ~/.bashrc): an empty home of its own keeps
    // the commands independent of the machine's dotfiles (a pyenv or nvm hook there can stall every command).
    // Deno keeps using the caller's cache, so the simulator is not compiled again per server.
    const home = `${dir}/home`;
    await Deno.mkdir(home);
    const denoDir = Deno.env.get("DENO_DIR") ??
      `${Deno.env.get("XDG_CACHE_HOME") ?? `${Deno.env.get("HOME") ?? "/root"}/.cache`}/deno`;
    const setEnv = setEnvLine({ HOME: home, DENO_DIR: denoDir, ...options.env });
    const hostKey = `${dir}/host_ecdsa_key`;
    await run("ssh-keygen", ["-q", "-t", "ecdsa", "-b", "256", "-N", "", "-C", "", "-f", hostKey]);
    const hostKeyFingerprint = await fingerprintOfFile(`${hostKey}.pub`);

    const authorized = options.forcedCommand === undefined
      ? keyLine
      : `restrict,command="${options.forcedCommand.replaceAll('"', '\\"')}" ${keyLine}`;
    await Deno.writeTextFile(`${dir}/authorized_keys`, authorized + "\n", { mode: 0o600 });

    const user = (await run("id", ["-un"])).trim();
    const logPath = `${dir}/sshd.log`;
    const configPath = `${dir}/sshd_config`;

    // A free port can be taken between probing and binding; sshd then exits and we try another.
    for (let attempt = 1;; attempt++) {
      const port = freePort();
      const config = [
        // First: sshd keeps the first value it reads for a keyword, so these override the defaults below.
        ...(options.extraConfig ?? []),
        `Port ${port}`,
        "ListenAddress 127.0.0.1",
        `HostKey ${hostKey}`,
        `PidFile ${dir}/sshd.pid`,
        `AuthorizedKeysFile ${dir}/authorized_keys`,
        "UsePAM no",
        "StrictModes no",
        `PermitRootLogin ${
          options.forcedCommand === undefined ? "prohibit-password" : "forced-commands-only"
        }`,
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "X11Forwarding no",
        "PrintMotd no",
        "LogLevel VERBOSE",
        ...(setEnv ? [setEnv] : []),
      ];
      await Deno.writeTextFile(configPath, config.join("\n") + "\n");
      await Deno.writeTextFile(logPath, "");

      let server = spawnSshd(logPath, configPath);
      if (await waitUntilListening(port, server.exited)) {
        let stopped = false;
        return {
          host: "127.0.0.1",
          port,
          user,
          hostKeyFingerprint,
          dir,
          logPath,
          async down() {
            if (!server.exited()) await killTree(server.pid, server.status, server.exited);
          },
          async up() {
            if (stopped) throw new Error("startSshd: up() after stop()");
            if (!server.exited()) return;
            server = spawnSshd(logPath, configPath);
            if (!await waitUntilListening(port, server.exited)) {
              if (!server.exited()) await killTree(server.pid, server.status, server.exited);
              throw new Error(`startSshd: sshd did not start again on port ${port}`);
            }
          },
          stop: once(async () => {
            stopped = true;
            if (!server.exited()) await killTree(server.pid, server.status, server.exited);
            await Deno.remove(dir, { recursive: true }).catch(() => {});
          }),
        };
      }
      if (!server.exited()) await killTree(server.pid, server.status, server.exited);
      else await server.status;
      const log = await Deno.readTextFile(logPath).catch(() => "");
      if (attempt >= 3 || !/Address already in use|Cannot bind/i.test(log)) {
        throw new Error(`startSshd: sshd did not start on port ${port}:\n${log}`);
      }
    }
  } catch (e) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw e;
  }
}

/** One sshd in the foreground (`-D`), logging to `logPath` (`-E` appends to it). */
function spawnSshd(logPath: string, configPath: string) {
  const child = new Deno.Command(SSHD, {
    args: ["-D", "-e", "-E", logPath, "-f", configPath],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  return { pid: child.pid, status, exited: () => exited };
}

/** A fresh client key made by ssh-keygen: PEM (SEC1 / PKCS#1), PKCS#8 or OpenSSH format. */
export async function generateClientKey(
  type: "ecdsa" | "rsa" | "ed25519",
  format: "pem" | "openssh" | "pkcs8",
  options: { bits?: number; passphrase?: string } = {},
): Promise<{ privateKey: string; publicKeyLine: string }> {
  const dir = await Deno.makeTempDir({ prefix: "hosting-automator-key-" });
  try {
    const args = ["-q", "-t", type, "-N", options.passphrase ?? "", "-C", `test-${type}-${format}`];
    args.push("-f", `${dir}/key`);
    if (type !== "ed25519") args.push("-b", String(options.bits ?? (type === "rsa" ? 2048 : 256)));
    if (format === "pem") args.push("-m", "PEM");
    if (format === "pkcs8") args.push("-m", "PKCS8");
    await run("ssh-keygen", args);
    return {
      privateKey: await Deno.readTextFile(`${dir}/key`),
      publicKeyLine: (await Deno.readTextFile(`${dir}/key.pub`)).trim(),
    };
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** `ssh-keygen -l` of a public key file: the reference the client's own computation is checked against. */
export async function fingerprintOfFile(publicKeyPath: string): Promise<string> {
  const out = await run("ssh-keygen", ["-l", "-E", "sha256", "-f", publicKeyPath]);
  const match = /SHA256:[A-Za-z0-9+/]+/.exec(out);
  if (!match) throw new Error(`ssh-keygen -l printed no fingerprint: ${out}`);
  return match[0];
}

function setEnvLine(env: Record<string, string>): string | null {
  const entries = Object.entries(env);
  if (entries.length === 0) return null;
  for (const [name, value] of entries) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`startSshd: bad variable name ${name}`);
    // sshd_config quoting cannot carry these.
    if (/["\\\r\n\0]/.test(value)) throw new Error(`startSshd: ${name} has a quote, backslash or newline`);
  }
  return "SetEnv " + entries.map(([name, value]) => `"${name}=${value}"`).join(" ");
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** True once the port answers with an SSH banner; false if sshd exited or the wait timed out. */
async function waitUntilListening(port: number, exited: () => boolean): Promise<boolean> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline && !exited()) {
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        const buffer = new Uint8Array(64);
        const n = await conn.read(buffer);
        if (n && new TextDecoder().decode(buffer.subarray(0, n)).startsWith("SSH-")) return true;
      } finally {
        conn.close();
      }
    } catch {
      // Not listening yet.
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return false;
}

/**
 * Ends sshd and every process it forked (per-connection sshd, the user's shell, its commands): a command
 * abandoned by a test must not outlive it. Descendants are found through /proc before the parent goes,
 * since they are re-parented afterwards.
 */
async function killTree(pid: number, status: Promise<Deno.CommandStatus>, exited: () => boolean) {
  const descendants = await descendantsOf(pid);
  if (!exited()) {
    try {
      Deno.kill(pid, "SIGTERM");
    } catch {
      // Already gone.
    }
  }
  for (const child of descendants) {
    try {
      Deno.kill(child, "SIGKILL");
    } catch {
      // Already gone.
    }
  }
  await status;
}

async function descendantsOf(root: number): Promise<number[]> {
  const parents = new Map<number, number>();
  for await (const entry of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = await Deno.readTextFile(`/proc/${entry.name}/stat`);
      // Field 4 is the parent pid; field 2 (the name) may hold spaces but ends with ")".
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      parents.set(Number(entry.name), ppid);
    } catch {
      // The process ended while we looked.
    }
  }
  const out: number[] = [];
  const walk = (pid: number) => {
    for (const [child, parent] of parents) {
      if (parent === pid) {
        out.push(child);
        walk(child);
      }
    }
  };
  walk(root);
  return out;
}

async function run(command: string, args: string[]): Promise<string> {
  const result = await new Deno.Command(command, { args, stdin: "null" }).output();
  const decoder = new TextDecoder();
  if (!result.success) {
    throw new Error(`${command} ${args.join(" ")} failed (${result.code}): ${decoder.decode(result.stderr)}`);
  }
  return decoder.decode(result.stdout);
}

function once(fn: () => Promise<void>): () => Promise<void> {
  let done: Promise<void> | undefined;
  return () => (done ??= fn());
}
