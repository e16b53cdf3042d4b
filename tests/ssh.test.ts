/**
 * The SSH transport against a real OpenSSH sshd on loopback (tests/support/sshd.ts): each test starts its
 * own server and stops it.
 */
import assert from "node:assert/strict";
import { importKey } from "npm:@microsoft/dev-tunnels-ssh-keys@3.12.12";
import type { SshConfig } from "../supabase/functions/hosting-automator/config.ts";
import { ERROR_CODES, HostingError } from "../supabase/functions/hosting-automator/errors.ts";
import type { RemoteShell } from "../supabase/functions/hosting-automator/remote.ts";
import { connectSsh, fingerprintOf } from "../supabase/functions/hosting-automator/ssh.ts";
import {
  fingerprintOfFile,
  generateClientKey,
  type Sshd,
  type SshdOptions,
  startSshd,
} from "./support/sshd.ts";
import { failsWith } from "./support/errors.ts";

const TIMEOUT = { timeoutMs: 10_000 };

function configFor(sshd: Sshd, privateKey: string, overrides: Partial<SshConfig> = {}): SshConfig {
  return {
    host: sshd.host,
    port: sshd.port,
    user: sshd.user,
    privateKey,
    hostKey: sshd.hostKeyFingerprint,
    connectTimeoutMs: 10_000,
    ...overrides,
  };
}

/** Starts an sshd that accepts a fresh ECDSA key, runs `fn`, and always stops the server. */
async function withSshd(
  fn: (sshd: Sshd, privateKey: string) => Promise<void>,
  options: Omit<SshdOptions, "authorizedKey"> = {},
): Promise<void> {
  const key = await generateClientKey("ecdsa", "pem");
  const sshd = await startSshd({ ...options, authorizedKey: key.publicKeyLine });
  try {
    await fn(sshd, key.privateKey);
  } finally {
    await sshd.stop();
  }
}

/** Connects, runs `fn`, and always closes the shell. */
async function withShell(config: SshConfig, fn: (shell: RemoteShell) => Promise<void>): Promise<void> {
  const shell = await connectSsh(config);
  try {
    await fn(shell);
  } finally {
    await shell.close();
  }
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

async function acceptedLogins(sshd: Sshd): Promise<number> {
  return (await Deno.readTextFile(sshd.logPath)).split("\n").filter((l) => l.includes("Accepted publickey"))
    .length;
}

/** A TCP server that accepts connections and never says a word, as a hung SSH server would. */
function silentServer(): { port: number; close(): Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) held.push(conn);
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    async close() {
      listener.close();
      await accepting.catch(() => {});
      for (const conn of held) conn.close();
    },
  };
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

Deno.test("a command's stdout, stderr and exit status come back", async () => {
  await withSshd(async (sshd, key) => {
    await withShell(configFor(sshd, key), async (shell) => {
      const failed = await shell.exec("printf 'out 1\\nout 2\\n'; printf 'err ✓\\n' >&2; exit 3", TIMEOUT);
      assert.deepEqual(failed, { stdout: "out 1\nout 2\n", stderr: "err ✓\n", exitCode: 3 });

      const ok = await shell.exec("printf 'héllo'", TIMEOUT);
      assert.deepEqual(ok, { stdout: "héllo", stderr: "", exitCode: 0 });

      // Killed by a signal: sshd sends exit-signal instead of exit-status, and the result names the signal.
      const killed = await shell.exec("echo before; kill -KILL $$", TIMEOUT);
      assert.deepEqual(killed, { stdout: "before\n", stderr: "", exitCode: null, signal: "KILL" });
      const terminated = await shell.exec("kill -TERM $$", TIMEOUT);
      assert.deepEqual(terminated, { stdout: "", stderr: "", exitCode: null, signal: "TERM" });
      // A shell whose child was killed reports 128 + the signal as its own exit status: no signal then.
      const reported = await shell.exec("bash -c 'kill -KILL $$'; exit $?", TIMEOUT);
      assert.deepEqual([reported.stdout, reported.exitCode, "signal" in reported], ["", 137, false]);
    });
  });
});

Deno.test("stdin is closed, so a command that reads it ends at once", async () => {
  await withSshd(async (sshd, key) => {
    await withShell(configFor(sshd, key), async (shell) => {
      const result = await shell.exec("cat; echo read-done", { timeoutMs: 5000 });
      assert.deepEqual(result, { stdout: "read-done\n", stderr: "", exitCode: 0 });
    });
  });
});

Deno.test("output larger than the channel window arrives whole", async () => {
  await withSshd(async (sshd, key) => {
    await withShell(configFor(sshd, key), async (shell) => {
      // 3 MB on stdout and 1 MB on stderr: more than the 1 MB receive window, so flow control must work.
      const result = await shell.exec(
        "head -c 3000000 /dev/zero | tr '\\0' a; head -c 1000000 /dev/zero | tr '\\0' b >&2",
        TIMEOUT,
      );
      assert.equal(result.exitCode, 0);
      // Output is kept up to 1 MiB per stream; the rest is drained so the command can finish.
      assert.equal(result.stdout.length, 1024 * 1024);
      assert.match(result.stdout, /^a+$/);
      assert.equal(result.stderr.length, 1_000_000);
    });
  });
});

Deno.test("the host key fingerprint is computed as ssh-keygen prints it", async () => {
  const keys = [
    await generateClientKey("ecdsa", "openssh", { bits: 256 }),
    await generateClientKey("ecdsa", "openssh", { bits: 384 }),
    await generateClientKey("rsa", "openssh", { bits: 2048 }),
    await generateClientKey("rsa", "openssh", { bits: 3072 }),
  ];
  const dir = await Deno.makeTempDir();
  try {
    for (const [i, key] of keys.entries()) {
      await Deno.writeTextFile(`${dir}/${i}.pub`, key.publicKeyLine + "\n");
      const expected = await fingerprintOfFile(`${dir}/${i}.pub`);
      assert.equal(await fingerprintOf(await importKey(key.publicKeyLine)), expected);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a wrong host key refuses to connect and nothing runs on the server", async () => {
  await withSshd(async (sshd, key) => {
    const marker = `${sshd.dir}/marker`;
    const other = await generateClientKey("ecdsa", "pem");
    await Deno.writeTextFile(`${sshd.dir}/other.pub`, other.publicKeyLine);
    const wrong = await fingerprintOfFile(`${sshd.dir}/other.pub`);

    const attempt = connectSsh(configFor(sshd, key, { hostKey: wrong }))
      .then((shell) => shell.exec(`touch ${marker}`, TIMEOUT));
    const error = await failsWith(attempt, "ssh_host_key_mismatch");

    assert.equal(error.transient, false);
    assert.equal(error.publicMessage, ERROR_CODES.ssh_host_key_mismatch.text);
    assert.match(error.message, new RegExp(sshd.hostKeyFingerprint.replace(/[+/]/g, "\\$&")));
    assert.equal(await exists(marker), false);
    // The client never authenticated, so no session could have run anything.
    assert.equal(await acceptedLogins(sshd), 0);
    // Control: the same command with the right pin does create the marker.
    await withShell(configFor(sshd, key), (shell) => shell.exec(`touch ${marker}`, TIMEOUT).then(() => {}));
    assert.equal(await exists(marker), true);
  });
});

Deno.test("the server's RSA host key can be pinned instead of its ECDSA key", async () => {
  const keyDir = await Deno.makeTempDir();
  try {
    const rsaHostKey = `${keyDir}/host_rsa_key`;
    const made = await new Deno.Command("ssh-keygen", {
      args: ["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", rsaHostKey],
    }).output();
    assert.ok(made.success);
    const rsaFingerprint = await fingerprintOfFile(`${rsaHostKey}.pub`);

    await withSshd(async (sshd, key) => {
      await withShell(configFor(sshd, key, { hostKey: rsaFingerprint }), async (shell) => {
        assert.equal((await shell.exec("echo rsa", TIMEOUT)).stdout, "rsa\n");
      });
      // The ECDSA pin still works on the same server.
      await withShell(configFor(sshd, key), async (shell) => {
        assert.equal((await shell.exec("echo ecdsa", TIMEOUT)).stdout, "ecdsa\n");
      });
    }, { extraConfig: [`HostKey ${rsaHostKey}`] });
  } finally {
    await Deno.remove(keyDir, { recursive: true });
  }
});

Deno.test("an unknown client key is refused with ssh_auth_failed", async () => {
  await withSshd(async (sshd) => {
    const stranger = await generateClientKey("ecdsa", "openssh");
    const error = await failsWith(connectSsh(configFor(sshd, stranger.privateKey)), "ssh_auth_failed");
    assert.equal(error.transient, false);
    assert.equal(error.publicMessage, ERROR_CODES.ssh_auth_failed.text);
    // Never the key itself, not even one line of it.
    const secretLines = stranger.privateKey.split("\n").filter((line) => line.length >= 16);
    for (const line of secretLines) {
      assert.ok(!error.message.includes(line) && !error.publicMessage.includes(line));
    }
  });
});

Deno.test("with a forced command the server runs it instead of the client's command", async () => {
  // Root may log in only with the forced command (PermitRootLogin forced-commands-only), as in production.
  const key = await generateClientKey("ecdsa", "pem");
  const sshd = await startSshd({ authorizedKey: key.publicKeyLine, forcedCommand: "echo forced" });
  try {
    await withShell(configFor(sshd, key.privateKey), async (shell) => {
      assert.deepEqual(await shell.exec("echo mine", TIMEOUT), {
        stdout: "forced\n",
        stderr: "",
        exitCode: 0,
      });
    });
  } finally {
    await sshd.stop();
  }
});

Deno.test("Ed25519 and passphrase-protected keys are refused with a clear message before connecting", async () => {
  const port = freePort(); // nothing listens: reaching the network would be ssh_unreachable instead
  const base = {
    host: "127.0.0.1",
    port,
    user: "root",
    hostKey: "SHA256:" + "A".repeat(43),
    connectTimeoutMs: 2000,
  };
  const keys = {
    ed25519: (await generateClientKey("ed25519", "openssh")).privateKey,
    passphrase: (await generateClientKey("ecdsa", "openssh", { passphrase: "secret words" })).privateKey,
    "passphrase PEM": (await generateClientKey("rsa", "pem", { passphrase: "secret words" })).privateKey,
    "P-521": (await generateClientKey("ecdsa", "pem", { bits: 521 })).privateKey,
  };
  for (const [what, privateKey] of Object.entries(keys)) {
    const error = await failsWith(connectSsh({ ...base, privateKey }), "ssh_auth_failed");
    assert.match(error.publicMessage, /not supported/, what);
    assert.match(error.publicMessage, /ECDSA .*RSA key without a passphrase/, what);
  }
  const garbage = await failsWith(connectSsh({ ...base, privateKey: "not a key" }), "ssh_auth_failed");
  assert.match(garbage.publicMessage, /could not be read/);
});

Deno.test("a closed port is ssh_unreachable", async () => {
  const key = await generateClientKey("ecdsa", "pem");
  const config = {
    host: "127.0.0.1",
    port: freePort(),
    user: "root",
    privateKey: key.privateKey,
    hostKey: "SHA256:" + "A".repeat(43),
    connectTimeoutMs: 5000,
  };
  const refused = await failsWith(connectSsh(config), "ssh_unreachable");
  assert.equal(refused.transient, true);
  assert.equal(refused.publicMessage, ERROR_CODES.ssh_unreachable.text);

  const unknownHost = await failsWith(
    connectSsh({ ...config, host: "no-such-host.invalid" }),
    "ssh_unreachable",
  );
  assert.equal(unknownHost.transient, true);
});

Deno.test("a server that never completes the handshake is ssh_timeout", async () => {
  const server = silentServer();
  try {
    const key = await generateClientKey("ecdsa", "pem");
    const started = performance.now();
    const error = await failsWith(
      connectSsh({
        host: "127.0.0.1",
        port: server.port,
        user: "root",
        privateKey: key.privateKey,
        hostKey: "SHA256:" + "A".repeat(43),
        connectTimeoutMs: 300,
      }),
      "ssh_timeout",
    );
    assert.ok(performance.now() - started < 2000);
    assert.equal(error.transient, true);
  } finally {
    await server.close();
  }
});

Deno.test("an aborted connect rejects with the abort reason", async () => {
  const server = silentServer();
  try {
    const key = await generateClientKey("ecdsa", "pem");
    const controller = new AbortController();
    setTimeout(() => controller.abort(new HostingError("lease_lost", "another worker took the job")), 100);
    const connecting = connectSsh({
      host: "127.0.0.1",
      port: server.port,
      user: "root",
      privateKey: key.privateKey,
      hostKey: "SHA256:" + "A".repeat(43),
      connectTimeoutMs: 10_000,
    }, { signal: controller.signal });
    await failsWith(connecting, "lease_lost");
  } finally {
    await server.close();
  }
});

Deno.test("a command that outlives its timeout fails with ssh_timeout", async () => {
  await withSshd(async (sshd, key) => {
    await withShell(configFor(sshd, key), async (shell) => {
      const started = performance.now();
      const error = await failsWith(shell.exec("sleep 5", { timeoutMs: 300 }), "ssh_timeout");
      assert.ok(performance.now() - started < 1000);
      assert.equal(error.transient, true);
      assert.equal(error.publicMessage, ERROR_CODES.ssh_timeout.text);

      // The connection stays usable, for one command and for many after it.
      assert.deepEqual(await shell.exec("echo still here", TIMEOUT), {
        stdout: "still here\n",
        stderr: "",
        exitCode: 0,
      });
      // More abandoned commands than sshd has sessions: as root, sshd refuses the kill signal, so each one
      // holds its session until it ends; later commands wait for a free one.
      for (let i = 0; i < 12; i++) {
        await failsWith(shell.exec("sleep 1", { timeoutMs: 50 }), "ssh_timeout");
      }
      assert.equal((await shell.exec("echo and again", TIMEOUT)).stdout, "and again\n");
    });
  });
});

Deno.test("one connection runs more commands than sshd has sessions", async () => {
  // sshd frees a session only after both sides closed its channel; the transport must answer every close.
  await withSshd(async (sshd, key) => {
    await withShell(configFor(sshd, key), async (shell) => {
      for (let i = 0; i < 25; i++) assert.equal((await shell.exec(`echo ${i}`, TIMEOUT)).stdout, `${i}\n`);
    });
  }, { extraConfig: ["MaxSessions 3"] });
});

Deno.test("an aborted command rejects with the abort reason", async () => {
  await withSshd(async (sshd, key) => {
    await withShell(configFor(sshd, key), async (shell) => {
      const controller = new AbortController();
      const running = shell.exec("sleep 5", { timeoutMs: 10_000, signal: controller.signal });
      setTimeout(() => controller.abort(new HostingError("lease_lost", "another worker took the job")), 100);
      await failsWith(running, "lease_lost");

      const other = new AbortController();
      other.abort();
      await failsWith(shell.exec("echo never", { timeoutMs: 1000, signal: other.signal }), "interrupted");
      assert.equal((await shell.exec("echo fine", TIMEOUT)).stdout, "fine\n");
    });
  });
});

Deno.test("PEM and OpenSSH keys, ECDSA and RSA, all authenticate", async (t) => {
  const cases = [
    ["ecdsa", "pem", 256],
    ["ecdsa", "openssh", 256],
    ["ecdsa", "pkcs8", 256],
    ["ecdsa", "pem", 384],
    ["ecdsa", "openssh", 384],
    ["rsa", "pem", 2048],
    ["rsa", "openssh", 2048],
    ["rsa", "openssh", 3072],
    ["rsa", "pkcs8", 2048],
  ] as const;
  for (const [type, format, bits] of cases) {
    await t.step(`${type} ${bits} ${format}`, async () => {
      const key = await generateClientKey(type, format, { bits });
      const sshd = await startSshd({ authorizedKey: key.publicKeyLine });
      try {
        await withShell(configFor(sshd, key.privateKey), async (shell) => {
          assert.equal((await shell.exec("echo in", TIMEOUT)).stdout, "in\n");
        });
        assert.equal(await acceptedLogins(sshd), 1);
      } finally {
        await sshd.stop();
      }
    });
  }
});

Deno.test("ten concurrent commands share one connection", async () => {
  await withSshd(async (sshd, key) => {
    await withShell(configFor(sshd, key), async (shell) => {
      const results = await Promise.all(
        Array.from({ length: 10 }, (_, i) => shell.exec(`sleep 0.2; echo "${i} $SSH_CONNECTION"`, TIMEOUT)),
      );
      const connections = new Set<string>();
      results.forEach((result, i) => {
        assert.equal(result.exitCode, 0);
        const [index, ...connection] = result.stdout.trim().split(" ");
        assert.equal(index, String(i));
        connections.add(connection.join(" "));
      });
      assert.equal(connections.size, 1);
      assert.equal(await acceptedLogins(sshd), 1);
    });
  });
});

Deno.test("more concurrent commands than sshd's MaxSessions wait their turn", async () => {
  await withSshd(async (sshd, key) => {
    await withShell(configFor(sshd, key), async (shell) => {
      const results = await Promise.all(
        Array.from({ length: 25 }, (_, i) => shell.exec(`sleep 0.1; echo ${i}`, TIMEOUT)),
      );
      assert.deepEqual(results.map((r) => r.stdout), Array.from({ length: 25 }, (_, i) => `${i}\n`));
    });
  }, { extraConfig: ["MaxSessions 10"] });
});

Deno.test("variables given to startSshd reach the command", async (t) => {
  const bin = await Deno.makeTempDir();
  const state = await Deno.makeTempDir();
  try {
    // A stand-in clpctl that is only found through the PATH given to sshd.
    await Deno.writeTextFile(
      `${bin}/clpctl`,
      '#!/bin/sh\necho "args=$* state=$HOSTING_TEST_STATE original=$SSH_ORIGINAL_COMMAND"\n',
      { mode: 0o755 },
    );
    const env = { PATH: `${bin}:/usr/bin:/bin`, HOSTING_TEST_STATE: state };

    await t.step("in an exec session", async () => {
      await withSshd(async (sshd, key) => {
        await withShell(configFor(sshd, key), async (shell) => {
          const result = await shell.exec('clpctl site:add:static; echo "$PATH"', TIMEOUT);
          const [line, path] = result.stdout.split("\n");
          assert.equal(line, `args=site:add:static state=${state} original=`);
          assert.ok(path.split(":").includes(bin), path);
        });
      }, { env });
    });

    await t.step("behind a forced command", async () => {
      await withSshd(async (sshd, key) => {
        await withShell(configFor(sshd, key), async (shell) => {
          const result = await shell.exec("site:add:static --domainName='example.com'", TIMEOUT);
          assert.equal(
            result.stdout,
            `args=gate state=${state} original=site:add:static --domainName='example.com'\n`,
          );
        });
      }, { env, forcedCommand: "clpctl gate" });
    });
  } finally {
    await Deno.remove(bin, { recursive: true });
    await Deno.remove(state, { recursive: true });
  }
});

Deno.test("a login banner does not disturb the session", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/banner`, "Authorized use only.\n");
    await withSshd(async (sshd, key) => {
      await withShell(configFor(sshd, key), async (shell) => {
        assert.equal((await shell.exec("echo ok", TIMEOUT)).stdout, "ok\n");
      });
    }, { extraConfig: [`Banner ${dir}/banner`] });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a connection lost mid-command is ssh_unreachable", async () => {
  const key = await generateClientKey("ecdsa", "pem");
  const sshd = await startSshd({ authorizedKey: key.publicKeyLine });
  try {
    const shell = await connectSsh(configFor(sshd, key.privateKey));
    try {
      const running = failsWith(shell.exec("sleep 5", TIMEOUT), "ssh_unreachable");
      await new Promise((resolve) => setTimeout(resolve, 300));
      await sshd.stop(); // kills the server and the session process holding our connection
      const error = await running;
      assert.equal(error.transient, true);
      await failsWith(shell.exec("echo again", TIMEOUT), "ssh_unreachable");
    } finally {
      await shell.close();
    }
  } finally {
    await sshd.stop();
  }
});

Deno.test("close() twice is harmless", async () => {
  await withSshd(async (sshd, key) => {
    const shell = await connectSsh(configFor(sshd, key));
    // A command still running when the shell closes fails; new ones are refused.
    const running = failsWith(shell.exec("sleep 5", TIMEOUT), "ssh_unreachable");
    await new Promise((resolve) => setTimeout(resolve, 200));
    await Promise.all([shell.close(), shell.close()]);
    await shell.close();
    await running;
    await failsWith(shell.exec("echo after", TIMEOUT), "ssh_unreachable");
  });
});
