/**
 * The Supabase commands the documentation tells people to run exist in the CLI the project pins (tests/run.ts
 * installs it, 3.1.0): every `supabase …` line of a shell code block in README.md, deploy/cloudpanel/README.md
 * and docs/ is resolved to its command through the CLI's own `--help`, and every flag it uses must be one that
 * command's help lists. CLI 3.x renamed targets (`--remote` for 2.x's `--linked`/`--db-url`/`--project-ref`),
 * so a command copied from older documentation fails here.
 */
import assert from "node:assert/strict";
import { harness, ROOT } from "./support/env.ts";
import { codeBlocks, shellLines, shellWords } from "./support/markdown.ts";

const DOCUMENTS = ["README.md", "deploy/cloudpanel/README.md"];
for (const entry of Deno.readDirSync(`${ROOT}docs`)) {
  if (entry.isFile && entry.name.endsWith(".md")) DOCUMENTS.push(`docs/${entry.name}`);
}
const SHELL = new Set(["sh", "bash", "shell", ""]);
const SEPARATORS = new Set([";", "&&", "||", "|"]);

interface Use {
  where: string;
  /** The words after `supabase`, up to the end of that command. */
  words: string[];
}

/** Every `supabase …` command in the shell code blocks of `markdown`. */
export function supabaseUses(markdown: string, file: string): Use[] {
  const uses: Use[] = [];
  for (const block of codeBlocks(markdown).filter((b) => SHELL.has(b.lang))) {
    for (const line of shellLines(block.text)) {
      const words = shellWords(line);
      words.forEach((word, i) => {
        // A command word: first on the line, after a separator, or inside $( … ).
        const atCommand = i === 0 || SEPARATORS.has(words[i - 1]) || words[i - 1].endsWith("$(");
        if (!atCommand || !/^(\$\()?supabase$/.test(word)) return;
        const rest: string[] = [];
        for (const w of words.slice(i + 1)) {
          if (SEPARATORS.has(w)) break;
          rest.push(w);
        }
        uses.push({ where: `${file} (block at line ${block.line}): ${line.trim()}`, words: rest });
      });
    }
  }
  return uses;
}

const helps = new Map<string, string>();

async function help(path: string[]): Promise<string> {
  const key = path.join(" ");
  if (!helps.has(key)) {
    const out = await new Deno.Command(harness.supabaseCli, {
      args: [...path, "--help"],
      env: { NO_COLOR: "1", SUPABASE_TELEMETRY_DISABLED: "1", DO_NOT_TRACK: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    helps.set(key, text);
  }
  return helps.get(key)!;
}

/** The names a help text lists under SUBCOMMANDS. */
function subcommands(helpText: string): string[] {
  const at = helpText.indexOf("\nSUBCOMMANDS");
  if (at < 0) return [];
  return [...helpText.slice(at).matchAll(/^ {2}([a-z][a-z0-9-]*)(?:, [a-z-]+)?\s/gm)].map((m) => m[1]);
}

/** What is wrong with one use: an unknown command, or flags its help does not list. */
export async function problems(use: Use): Promise<string[]> {
  const path: string[] = [];
  let text = await help(path);
  for (const word of use.words) {
    if (word.startsWith("-")) break;
    if (!subcommands(text).includes(word)) break;
    path.push(word);
    text = await help(path);
  }
  const found: string[] = [];
  if (path.length === 0) return [`no supabase command in: ${use.words.join(" ")}`];
  if (!new RegExp(`USAGE\\s+supabase ${path.join(" ")}\\b`).test(text)) {
    found.push(`supabase ${path.join(" ")}: --help shows no usage for it`);
  }
  const group = subcommands(text);
  const next = use.words[path.length];
  if (group.length > 0 && !text.includes("\nFLAGS")) {
    found.push(
      `supabase ${path.join(" ")} is a group: ${next ?? "nothing"} is not one of ${group.join(", ")}`,
    );
  }
  for (const word of use.words.slice(path.length)) {
    const flag = /^(--?[A-Za-z][\w-]*)/.exec(word)?.[1];
    if (!flag || word.startsWith("$(")) continue;
    const listed = new RegExp(`(^|[\\s,])${flag.replace(/-/g, "\\-")}(?=[\\s,=\\[]|$)`, "m");
    if (!listed.test(text)) found.push(`supabase ${path.join(" ")}: no flag ${flag}`);
  }
  return found;
}

Deno.test("the checker finds flags and commands the pinned CLI does not have", async () => {
  const sample = [
    "```sh",
    "supabase db push --linked                  # CLI 2.x's flag",
    'supabase migration up --db-url "$DB"',
    "supabase db pusj --remote",
    "supabase secrets set --env-file x.env && supabase functions deploy f --project-ref abc",
    "supabase db push --remote --dry-run --yes",
    "```",
  ].join("\n");
  const found = [];
  for (const use of supabaseUses(sample, "sample")) found.push(...await problems(use));
  assert.deepEqual(found, [
    "supabase db push: no flag --linked",
    "supabase migration up: no flag --db-url",
    "supabase db is a group: pusj is not one of diff, dump, push, pull, reset, lint, start, query, advisors, schema",
    "supabase db: no flag --remote",
    "supabase functions deploy: no flag --project-ref",
  ]);
});

Deno.test("every supabase command in the documentation's shell blocks exists with every flag it uses", async () => {
  const uses: Use[] = [];
  for (const file of DOCUMENTS) uses.push(...supabaseUses(await Deno.readTextFile(`${ROOT}${file}`), file));
  const commands = new Set(uses.map((u) => u.words.filter((w) => /^[a-z]/.test(w)).slice(0, 2).join(" ")));
  // The deployment and the local path use these; if one disappears from the README, this test says so.
  for (const expected of ["db push", "migration up", "secrets set", "functions deploy", "link", "db query"]) {
    assert.ok(
      [...commands].some((c) => c.startsWith(expected)),
      `the README no longer runs supabase ${expected}`,
    );
  }
  const found: string[] = [];
  for (const use of uses) for (const p of await problems(use)) found.push(`${p}\n    in ${use.where}`);
  assert.deepEqual(found, [], found.join("\n"));
});
