/**
 * A RemoteShell (remote.ts) that runs the clpctl simulator in this process: the demo's CloudPanel server,
 * without sshd or a child process per command.
 *
 * It accepts only what the CloudPanel client sends: `clpctl <verb> --flag='value' …`, values single-quoted as
 * domain.ts `shellQuote` makes them (a `'` inside a value written `'\''`) or bare. The line is parsed here into
 * an argument array, never given to a shell. Anything else (another program, `;`, `|`, `$`, backquotes,
 * double quotes, backslashes outside that one escape, unbalanced quotes, newlines) is refused the way the
 * server's forced-command gate (deploy/cloudpanel/clpctl-gate) refuses it: one line on stderr, exit status 64.
 */
import { runClpctl } from "./clpctl_sim.ts";
import { HostingError } from "../supabase/functions/hosting-automator/errors.ts";
import type { ExecResult, RemoteShell } from "../supabase/functions/hosting-automator/remote.ts";

/** EX_USAGE, as the gate answers a refused command. */
export const REFUSED_EXIT_CODE = 64;
const MAX_COMMAND_CHARS = 4096;
/** Characters allowed outside quotes: what verbs, flags and bare values are made of. No shell metacharacter. */
const BARE_RE = /[A-Za-z0-9_:=.,\/@%+-]/;

export class CommandRefused extends Error {
  override name = "CommandRefused";
}

/** The words of a command line, as a POSIX shell would split them for this subset; throws CommandRefused. */
export function splitWords(line: string): string[] {
  if (line.length > MAX_COMMAND_CHARS) {
    throw new CommandRefused(`longer than ${MAX_COMMAND_CHARS} characters`);
  }
  const words: string[] = [];
  let word: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === " " || c === "\t") {
      if (word !== null) words.push(word);
      word = null;
    } else if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) throw new CommandRefused("unbalanced single quote");
      word = (word ?? "") + line.slice(i + 1, end);
      i = end;
    } else if (c === "\\" && line[i + 1] === "'") {
      // The `\'` of shellQuote's `'\''`: a literal quote between two quoted parts.
      word = (word ?? "") + "'";
      i++;
    } else if (BARE_RE.test(c)) {
      word = (word ?? "") + c;
    } else {
      const shown = /^[\x21-\x7e]$/.test(c)
        ? `'${c}'`
        : `U+${c.codePointAt(0)!.toString(16).padStart(4, "0")}`;
      throw new CommandRefused(`character ${shown} outside single quotes`);
    }
  }
  if (word !== null) words.push(word);
  return words;
}

/** The clpctl arguments of a command line (without `clpctl`); throws CommandRefused. */
export function parseClpctlCommand(line: string): string[] {
  const words = splitWords(line);
  if (words[0] !== "clpctl") throw new CommandRefused("only clpctl may run here");
  if (words.length < 2) throw new CommandRefused("clpctl without a command");
  return words.slice(1);
}

/** The simulator's state lives in `stateDir` (see dev/clpctl_sim.ts); the caller creates and removes it. */
export function inProcessShell(stateDir: string): RemoteShell {
  let closed = false;
  return {
    async exec(command, { timeoutMs, signal }): Promise<ExecResult> {
      if (closed) throw new HostingError("ssh_unreachable", "in-process shell: exec after close");
      let argv: string[];
      try {
        argv = parseClpctlCommand(command);
      } catch (error) {
        if (!(error instanceof CommandRefused)) throw error;
        return {
          stdout: "",
          stderr: `in-process shell: refused: ${error.message}\n`,
          exitCode: REFUSED_EXIT_CODE,
        };
      }
      // As over SSH, giving up does not wait for the command: the timeout or the caller's signal settles the
      // call at once, and also cuts short what the simulator sleeps (its delay and hang faults).
      const stop = new AbortController();
      let why: "timeout" | "aborted" | null = null;
      const stopped = new Promise<never>((_, reject) => {
        stop.signal.addEventListener("abort", () => {
          reject(
            why === "timeout"
              ? new HostingError("ssh_timeout", `in-process shell: no answer within ${timeoutMs} ms`)
              : new HostingError("interrupted", "in-process shell: aborted", { cause: signal?.reason }),
          );
        }, { once: true });
      });
      const end = (reason: "timeout" | "aborted") => {
        why ??= reason;
        stop.abort();
      };
      const timer = setTimeout(() => end("timeout"), Math.min(timeoutMs, 2 ** 31 - 1)); // larger fires at once
      const onAbort = () => end("aborted");
      signal?.addEventListener("abort", onAbort, { once: true });
      if (signal?.aborted) onAbort();
      const work = runClpctl(argv, stateDir, { signal: stop.signal }).catch((error) => {
        if (why !== null) return null; // cut short by us: `stopped` has answered
        throw new HostingError("ssh_unreachable", `in-process shell: the simulator failed: ${error}`, {
          cause: error,
        });
      });
      try {
        return (await Promise.race([work, stopped]))!;
      } finally {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      }
    },
    close() {
      closed = true;
      return Promise.resolve();
    },
  };
}
