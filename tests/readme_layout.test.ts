/**
 * The README stays a page a person can scan: no prose line over 120 characters (tables and code blocks
 * excepted), no table row over 160, the sections in the order a newcomer needs them, the long material in
 * docs/, and every relative link in the README and docs/ pointing at a file that exists.
 */
import assert from "node:assert/strict";
import { ROOT } from "./support/env.ts";

const PROSE_MAX = 120;
const TABLE_MAX = 160;
const README = "README.md";

/** Lines over the limits: prose over PROSE_MAX, table rows over TABLE_MAX; code blocks are not looked at. */
export function overlong(markdown: string): string[] {
  const found: string[] = [];
  let inCode = false;
  markdown.split("\n").forEach((line, i) => {
    if (line.startsWith("```")) {
      inCode = !inCode;
      return;
    }
    if (inCode) return;
    const length = [...line].length;
    const table = line.startsWith("|");
    if (length > (table ? TABLE_MAX : PROSE_MAX)) {
      found.push(
        `line ${i + 1}: ${length} characters${table ? " (a table row)" : ""}: ${line.slice(0, 60)}…`,
      );
    }
  });
  return found;
}

/** Relative links (`[text](path)` and `[text](path#anchor)`) of a Markdown file whose target does not exist. */
export async function brokenLinks(file: string): Promise<string[]> {
  const text = await Deno.readTextFile(`${ROOT}${file}`);
  const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/") + 1) : "";
  const broken: string[] = [];
  for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
    if (/^[a-z]+:/.test(target) || target.startsWith("#")) continue;
    const path = new URL(target.split("#")[0], `file:///${dir}`).pathname.slice(1);
    const exists = await Deno.stat(`${ROOT}${path}`).then(() => true, () => false);
    if (!exists) broken.push(`${file}: ${target}`);
  }
  return broken;
}

Deno.test("the line checker finds long prose and wide tables, and leaves code blocks alone", () => {
  const long = "word ".repeat(30);
  const text = [
    "short",
    long,
    "```sh",
    long + long,
    "```",
    `| ${"x".repeat(130)} |`,
    `| ${"y".repeat(170)} |`,
  ].join("\n");
  assert.deepEqual(overlong(text).map((f) => f.slice(0, f.indexOf(":", 8))), [
    "line 2: 150 characters",
    "line 7: 174 characters (a table row)",
  ]);
});

Deno.test("no README line is over 120 characters outside tables and code, no table row over 160", async () => {
  const found = overlong(await Deno.readTextFile(`${ROOT}${README}`));
  assert.deepEqual(found, [], found.join("\n"));
});

Deno.test("the README's sections come in the order a newcomer needs them", async () => {
  const headings = (await Deno.readTextFile(`${ROOT}${README}`)).split("\n").filter((l) => /^## /.test(l));
  assert.deepEqual(headings, [
    "## The two commands",
    "## Quick start (local)",
    "## Deploy to Supabase",
    "## Prepare the CloudPanel server",
    "## Operate",
    "## Settings",
    "## How it is built",
  ]);
});

Deno.test("the README's relative links, and those of docs/ and the server guide, point at files that exist", async () => {
  const files = [README, "deploy/cloudpanel/README.md"];
  for (const entry of Deno.readDirSync(`${ROOT}docs`)) {
    if (entry.isFile && entry.name.endsWith(".md")) files.push(`docs/${entry.name}`);
  }
  const broken: string[] = [];
  for (const file of files) broken.push(...await brokenLinks(file));
  assert.deepEqual(broken, []);
  // The measured figures moved out of the README live in docs/, each with the command that produced them.
  for (
    const [doc, command] of [["docs/performance.md", "deno task bench"], ["docs/chaos.md", "deno task chaos"]]
  ) {
    const text = await Deno.readTextFile(`${ROOT}${doc}`);
    assert.ok(text.includes(command) && /^\| /m.test(text), `${doc} holds the figures of ${command}`);
  }
});
