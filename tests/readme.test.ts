/**
 * The README stays true: the commands it gives exist, CI runs its test command, every setting the code reads
 * is documented, and every error code it explains is one the code can produce.
 */
import assert from "node:assert/strict";
import { CONFIG_NAMES } from "../supabase/functions/hosting-automator/config.ts";
import { ERROR_CODES } from "../supabase/functions/hosting-automator/errors.ts";
import { USAGE } from "../cli/provision.ts";
import { ROOT } from "./support/env.ts";

const readme = await Deno.readTextFile(`${ROOT}README.md`);
const tasks = Object.keys(JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks);

Deno.test("every `deno task` the README mentions is defined in deno.json, demo and test among them", () => {
  const mentioned = new Set([...readme.matchAll(/deno task ([a-z][a-z:-]*)/g)].map((m) => m[1]));
  assert.ok(mentioned.has("demo") && mentioned.has("test"));
  for (const task of mentioned) assert.ok(tasks.includes(task), `deno task ${task} is not defined`);
});

Deno.test("CI runs the README's test command", async () => {
  const ci = await Deno.readTextFile(`${ROOT}.ci/run`);
  assert.match(ci, /^deno task test$/m);
});

Deno.test("every setting the function reads is in the README's configuration table", () => {
  for (const name of CONFIG_NAMES) assert.ok(readme.includes(`\`${name}\``), `${name} is not documented`);
  const example = Deno.readTextFileSync(`${ROOT}.env.example`);
  for (const name of CONFIG_NAMES.filter((n) => !n.startsWith("SUPABASE_"))) {
    assert.ok(example.includes(name), `${name} is missing from .env.example`);
  }
});

Deno.test("the error codes the README explains exist", () => {
  const start = readme.indexOf("**Common failures**");
  // The failure table's section only: later sections have tables of their own.
  const section = readme.slice(start, readme.indexOf("\n## ", start));
  const codes = [...section.matchAll(/^\| `([a-z_]+)`/gm)].map((m) => m[1]);
  assert.ok(codes.length >= 8);
  for (const code of codes) assert.ok(code in ERROR_CODES, `${code} is not an error code`);
});

Deno.test("every CLI flag the README shows is one the CLI accepts", () => {
  for (const [, flag] of readme.matchAll(/provision (--[a-z-]+)/g)) assert.ok(USAGE.includes(flag), flag);
});
