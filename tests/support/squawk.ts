/**
 * Test support: squawk, the migration linter (npm package `squawk-cli`, installed by `deno task test` into
 * .cache/tools), with the project's configuration (.squawk.toml).
 */
import { ROOT } from "./env.ts";

export const SQUAWK_VERSION = "2.66.0";
export const SQUAWK_BIN = `${ROOT}.cache/tools/node_modules/.bin/squawk`;

/** Lints the files; exit code 0 means no finding. Findings are one line each (`file:line:col: warning: rule …`). */
export async function squawk(paths: string[], bin = SQUAWK_BIN): Promise<{ code: number; output: string }> {
  const out = await new Deno.Command(bin, {
    args: ["--config", `${ROOT}.squawk.toml`, "--reporter", "gcc", ...paths],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code: out.code, output: (decoder.decode(out.stdout) + decoder.decode(out.stderr)).trim() };
}
