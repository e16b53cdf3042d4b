// deno-lint-ignore-file no-console
/**
 * `deno task simulators`: what a local try of the function cannot have, on loopback, for `deno task serve` and
 * `deno task provision` (README, "Quick start"):
 *
 *   a CloudPanel server   a real OpenSSH sshd whose only key may run nothing but the gate
 *                         (deploy/cloudpanel/clpctl-gate, as on a real server), which runs the clpctl
 *                         simulator (dev/bin/clpctl); the gate's decisions go to `gate.log` in its directory
 *   its HTTPS side        dev/tls_sim.ts: serves the certificates the simulated clpctl installed
 *   public DNS            dev/doh_sim.ts: every name points at 127.0.0.1, the server's public address here
 *   Matomo                dev/matomo_sim.ts
 *
 * Their settings (the SSH key, host key, ports, the TLS simulator's CA, the Matomo token) go into the env
 * file (`--env-file`, default .env.local) between two marker lines, replaced at each start; the file's other
 * lines (the database, the key callers present) are kept. Runs until Ctrl-C or SIGTERM, then stops them all.
 * Needs OpenSSH's sshd (/usr/sbin/sshd), as the tests do.
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { startDohSim } from "./doh_sim.ts";
import { startMatomoSim } from "./matomo_sim.ts";
import { startTlsSim } from "./tls_sim.ts";
import { generateClientKey, startSshd } from "../tests/support/sshd.ts";

const GATE = fileURLToPath(new URL("../deploy/cloudpanel/clpctl-gate", import.meta.url));
const CLPCTL = fileURLToPath(new URL("./bin/clpctl", import.meta.url));
export const BEGIN =
  "# hosting-automator simulators: begin (written by `deno task simulators`, replaced at each start)";
export const END = "# hosting-automator simulators: end";

/** The env file with the block between the markers replaced by `settings` (appended when there was none). */
export function withSettings(text: string, settings: Record<string, string>): string {
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  const begin = lines.indexOf(BEGIN);
  const end = lines.indexOf(END, begin);
  const kept = begin >= 0 && end > begin ? [...lines.slice(0, begin), ...lines.slice(end + 1)] : lines;
  while (kept.length && kept[kept.length - 1] === "") kept.pop();
  // One line per value: a value with newlines (a key, a certificate) is double-quoted with \n escapes.
  const block = Object.entries(settings).map(([name, value]) =>
    value.includes("\n") ? `${name}="${value.replaceAll("\n", "\\n")}"` : `${name}=${value}`
  );
  return [...kept, ...(kept.length ? [""] : []), BEGIN, ...block, END, ""].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { "env-file": { type: "string", default: ".env.local" } },
    strict: true,
  });
  const envFile = values["env-file"]!;
  const dir = await Deno.makeTempDir({ prefix: "hosting-automator-simulators-" });
  const state = `${dir}/clpctl`;
  const bin = `${dir}/bin`;
  await Deno.mkdir(state);
  await Deno.mkdir(bin);
  const stops: Array<() => Promise<void>> = [() => Deno.remove(dir, { recursive: true })];
  const stop = async () => {
    for (const close of stops.reverse()) await close().catch(() => {});
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);

  // The gate logs to syslog with `logger`, and runs clpctl through `sudo -n` when it is not root (option B of
  // deploy/cloudpanel/README.md): stand-ins for both, so a local try writes nothing outside its directory.
  await Deno.writeTextFile(`${bin}/logger`, `#!/bin/sh\nprintf '%s\\n' "$*" >> '${dir}/gate.log'\n`, {
    mode: 0o755,
  });
  await Deno.writeTextFile(
    `${bin}/sudo`,
    `#!/bin/sh\n[ "$1" = -n ] && shift\n[ "$1" = -- ] && shift\nexec "$@"\n`,
    { mode: 0o755 },
  );
  const key = await generateClientKey("ecdsa", "pem");
  const sshd = await startSshd({
    authorizedKey: key.publicKeyLine,
    forcedCommand: GATE,
    env: { PATH: `${bin}:/usr/local/bin:/usr/bin:/bin`, CLPCTL_GATE_BIN: CLPCTL, CLPCTL_SIM_STATE: state },
  });
  stops.push(() => sshd.stop());
  const tls = await startTlsSim({ stateDir: state });
  stops.push(() => tls.close());
  const doh = await startDohSim();
  doh.setResolver((_name, type) => (type === "A" ? ["127.0.0.1"] : []));
  stops.push(() => doh.close());
  const matomo = await startMatomoSim();
  stops.push(() => matomo.close());

  const settings = {
    CLOUDPANEL_SSH_HOST: sshd.host,
    CLOUDPANEL_SSH_PORT: String(sshd.port),
    CLOUDPANEL_SSH_USER: sshd.user,
    CLOUDPANEL_SSH_PRIVATE_KEY: key.privateKey.trim(),
    CLOUDPANEL_SSH_HOST_KEY: sshd.hostKeyFingerprint,
    CLOUDPANEL_PUBLIC_IPS: "127.0.0.1",
    HOSTING_DOH_URL: doh.url,
    HOSTING_HTTPS_PORT: String(tls.port),
    HOSTING_HTTPS_CA: tls.caPem.trim(),
    MATOMO_API_URL: matomo.url,
    MATOMO_API_TOKEN: matomo.token,
  };
  const before = await Deno.readTextFile(envFile).catch((error) => {
    if (error instanceof Deno.errors.NotFound) return "";
    throw error;
  });
  await Deno.writeTextFile(envFile, withSettings(before, settings), { mode: 0o600 });

  console.log(`CloudPanel  sshd on ${sshd.host}:${sshd.port}, key forced through ${GATE}`);
  console.log(`            clpctl state in ${state}, the gate's decisions in ${dir}/gate.log`);
  console.log(`HTTPS       TLS simulator on 127.0.0.1:${tls.port}`);
  console.log(`DNS         ${doh.url} (every name: 127.0.0.1)`);
  console.log(`Matomo      ${matomo.url}`);
  console.log(`ready: their settings are in ${envFile}; Ctrl-C stops them`);
}
