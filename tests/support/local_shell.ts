/**
 * Test support: a RemoteShell that runs the command line locally with `bash -c`, with dev/bin (the clpctl
 * simulator) first on PATH and CLPCTL_SIM_STATE set, for tests that do not need sshd.
 *
 * The command runs in its own session (`setsid`), so a timeout or an abort kills the whole process group,
 * not only bash; the result then has no exit status, as over SSH when the remote command is killed.
 */
import { fileURLToPath } from "node:url";
import { HostingError } from "../../supabase/functions/hosting-automator/errors.ts";
import type { ExecResult, RemoteShell } from "../../supabase/functions/hosting-automator/remote.ts";

export const DEV_BIN = fileURLToPath(new URL("../../dev/bin", import.meta.url));

export function localShell(stateDir: string): RemoteShell {
  let closed = false;
  return {
    async exec(command, { timeoutMs, signal }): Promise<ExecResult> {
      if (closed) throw new HostingError("ssh_unreachable", "local shell: exec after close");
      if (signal?.aborted) {
        throw new HostingError("interrupted", "local shell: aborted", { cause: signal.reason });
      }
      let child: Deno.ChildProcess;
      try {
        child = new Deno.Command("setsid", {
          args: ["bash", "-c", command],
          env: { PATH: `${DEV_BIN}:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}`, CLPCTL_SIM_STATE: stateDir },
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).spawn();
      } catch (error) {
        throw new HostingError("ssh_unreachable", `local shell: cannot start setsid/bash: ${error}`, {
          cause: error,
        });
      }
      let ended: "timeout" | "aborted" | null = null;
      const kill = (why: "timeout" | "aborted") => {
        ended ??= why;
        try {
          Deno.kill(-child.pid, "SIGKILL"); // setsid made the child a group leader
        } catch {
          // already gone
        }
      };
      const timer = setTimeout(() => kill("timeout"), Math.min(timeoutMs, 2 ** 31 - 1)); // larger fires at once
      const onAbort = () => kill("aborted");
      signal?.addEventListener("abort", onAbort, { once: true });
      let output: Deno.CommandOutput;
      try {
        output = await child.output();
      } finally {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      }
      if (ended === "timeout") {
        throw new HostingError("ssh_timeout", `local shell: no answer within ${timeoutMs} ms`);
      }
      if (ended === "aborted") {
        throw new HostingError("interrupted", "local shell: aborted", { cause: signal?.reason });
      }
      const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
      return {
        stdout: decode(output.stdout),
        stderr: decode(output.stderr),
        exitCode: output.signal === null ? output.code : null,
        ...(output.signal ? { signal: output.signal.replace(/^SIG/, "") } : {}),
      };
    },
    close() {
      closed = true;
      return Promise.resolve();
    },
  };
}
