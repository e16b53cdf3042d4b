/**
 * deploy/cloudpanel/check-key.sh, the operator's check that the function's key runs nothing but the gate's
 * shapes, run with OpenSSH's `ssh` against a real sshd: behind the gate (every check passes, and only the one
 * allowed certificate request reaches clpctl), with a key that is not forced through the gate (it stops after
 * `id`), and with the forced command but without `restrict` (the port forwarding check fails).
 *
 * Runs alone too: `deno test -A tests/check_key.test.ts`.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { readSimState } from "../dev/clpctl_sim.ts";
import { DEV_BIN } from "./support/local_shell.ts";
import { generateClientKey, type Sshd, startSshd } from "./support/sshd.ts";

const SCRIPT = fileURLToPath(new URL("../deploy/cloudpanel/check-key.sh", import.meta.url));
const GATE = fileURLToPath(new URL("../deploy/cloudpanel/clpctl-gate", import.meta.url));
/** The checks the script makes behind a correct gate: `id`, eight other refusals, the allowed shape, forwarding. */
const CHECKS = 11;

interface Server {
  sshd: Sshd;
  state: string;
  syslog: string;
  /** Runs the script as an operator would, with the key file and a known_hosts that pins the server. */
  check(): Promise<{ code: number; stdout: string; stderr: string }>;
  close(): Promise<void>;
}

async function server(options: { gate: boolean; restrict?: boolean }): Promise<Server> {
  const dir = await Deno.makeTempDir({ prefix: "check-key-" });
  const state = `${dir}/state`;
  await Deno.mkdir(state);
  const syslog = `${dir}/syslog.log`;
  await Deno.writeTextFile(`${dir}/logger`, `#!/bin/sh\nprintf '%s\\n' "$*" >> '${syslog}'\n`, {
    mode: 0o755,
  });
  const key = await generateClientKey("ecdsa", "pem");
  const sshd = await startSshd({
    authorizedKey: key.publicKeyLine,
    forcedCommand: options.gate ? GATE : undefined,
    env: {
      PATH: `${dir}:/usr/local/bin:/usr/bin:/bin`,
      CLPCTL_GATE_BIN: `${DEV_BIN}/clpctl`,
      CLPCTL_SIM_STATE: state,
    },
  });
  if (options.gate && options.restrict === false) {
    // The forced command alone, as someone might write it: sshd reads the file again at every login.
    await Deno.writeTextFile(`${sshd.dir}/authorized_keys`, `command="${GATE}" ${key.publicKeyLine}\n`);
  }
  const keyFile = `${dir}/hosting-automator`;
  await Deno.writeTextFile(keyFile, key.privateKey, { mode: 0o600 });
  const hostKey = (await Deno.readTextFile(`${sshd.dir}/host_ecdsa_key.pub`)).trim().split(" ").slice(0, 2);
  const knownHosts = `${dir}/known_hosts`;
  await Deno.writeTextFile(knownHosts, `[${sshd.host}]:${sshd.port} ${hostKey.join(" ")}\n`);
  return {
    sshd,
    state,
    syslog,
    async check() {
      const out = await new Deno.Command(SCRIPT, {
        args: [
          "-i",
          keyFile,
          "-p",
          String(sshd.port),
          "-o",
          `UserKnownHostsFile=${knownHosts}`,
          "-o",
          "StrictHostKeyChecking=yes",
          `${sshd.user}@${sshd.host}`,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
      return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
    },
    async close() {
      await sshd.stop();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

async function withServer(
  options: { gate: boolean; restrict?: boolean },
  body: (s: Server) => Promise<void>,
) {
  const s = await server(options);
  try {
    await body(s);
  } finally {
    await s.close();
  }
}

/** The report's lines: `ok` or `FAIL`, the check, the detail. */
function lines(stdout: string): { verdict: string; what: string; detail: string }[] {
  return stdout.trim().split("\n").filter((l) => /^(ok|FAIL)\s/.test(l)).map((l) => {
    const match = /^(ok|FAIL)\s+(.+?)(?:\s{2,}(.*))?$/.exec(l);
    assert.ok(match, `not a report line: ${l}`);
    return { verdict: match[1], what: match[2], detail: match[3] ?? "" };
  });
}

Deno.test("behind the gate every check passes, and only the allowed certificate request reaches clpctl", async () => {
  await withServer({ gate: true }, async (s) => {
    const run = await s.check();
    assert.equal(run.code, 0, run.stdout + run.stderr);
    const report = lines(run.stdout);
    assert.equal(report.length, CHECKS, run.stdout);
    assert.deepEqual(report.filter((r) => r.verdict !== "ok"), []);
    assert.match(run.stdout, new RegExp(`^${CHECKS} checks, 0 failed$`, "m"));
    const byWhat = new Map(report.map((r) => [r.what, r.detail]));
    assert.match(byWhat.get("a shell command")!, /^refused: only clpctl commands are allowed/);
    assert.match(byWhat.get("site:delete without --force")!, /^refused: --force is required for site:delete/);
    assert.match(byWhat.get("no command (a login shell)")!, /^refused: empty command/);
    const allowed = report.find((r) => r.what.startsWith("allowed:"))!;
    assert.match(
      allowed.detail,
      /^reached clpctl \(exit 1\): Site "check-[0-9a-f]{8}\.example" does not exist\./,
    );

    // What reached clpctl: the one certificate request, for a site it does not have; nothing was made.
    const state = await readSimState(s.state);
    assert.deepEqual(state.calls.map((c) => c.verb), ["lets-encrypt:install:certificate"]);
    assert.match(state.calls[0].domainName ?? "", /^check-[0-9a-f]{8}\.example$/);
    assert.deepEqual([state.sites, state.users, state.certificates], [{}, {}, {}]);
    const log = (await Deno.readTextFile(s.syslog)).trim().split("\n");
    assert.equal(log.filter((l) => l.includes("refused:")).length, CHECKS - 2, log.join("\n"));
    assert.equal(log.filter((l) => l.includes("allowed: lets-encrypt:install:certificate")).length, 1);
  });
});

Deno.test("a key that is not forced through the gate fails at `id`, and nothing else is sent", async () => {
  await withServer({ gate: false }, async (s) => {
    const run = await s.check();
    assert.equal(run.code, 1, run.stdout + run.stderr);
    const report = lines(run.stdout);
    assert.equal(report.length, 1, run.stdout);
    assert.equal(report[0].verdict, "FAIL");
    assert.match(report[0].detail, /^ran without the gate \(exit 0\): uid=\d+/);
    assert.match(run.stderr, /not forced through the gate; nothing else was sent/);
    assert.match(run.stdout, /^1 checks, 1 failed$/m);
    // Only `id` ran: the clpctl simulator was never called.
    assert.deepEqual((await readSimState(s.state)).calls, []);
  });
});

Deno.test("the forced command without `restrict` fails the port forwarding check", async () => {
  await withServer({ gate: true, restrict: false }, async (s) => {
    const run = await s.check();
    assert.equal(run.code, 1, run.stdout + run.stderr);
    const failed = lines(run.stdout).filter((r) => r.verdict === "FAIL");
    assert.deepEqual(failed.map((r) => r.what), ["no port forwarding"]);
    assert.match(failed[0].detail, /remote forwarding was accepted/);
    assert.match(run.stdout, new RegExp(`^${CHECKS} checks, 1 failed$`, "m"));
  });
});

Deno.test("a key the server does not accept is a failure to log in, not a pass", async () => {
  await withServer({ gate: true }, async (s) => {
    await Deno.writeTextFile(`${s.sshd.dir}/authorized_keys`, "");
    const run = await s.check();
    assert.equal(run.code, 1);
    assert.match(run.stderr, /^check-key: ssh to .* failed: .*Permission denied/m);
    assert.equal(lines(run.stdout).length, 0);
  });
});
