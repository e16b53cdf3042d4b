/**
 * The repository explains itself: no file cites a document that is not in it (the design notes and research
 * notes the project was built from live outside it), and every pointer into docs/architecture.md names a
 * section that exists. A comment either states its fact or points to "docs/architecture.md §N".
 *
 * Section references to public standards ("RFC 9110 §8.6") are allowed. Inside docs/architecture.md a bare
 * "§N" is a reference to its own section N and must exist too.
 */
import assert from "node:assert/strict";
import { ROOT } from "./support/env.ts";

const ARCHITECTURE = "docs/architecture.md";
const SECTION = "\u00a7";

/** Citations of documents outside the repository, and what each is (built so that this file passes). */
const OUTSIDE: ReadonlyArray<readonly [RegExp, string]> = [
  [new RegExp(`design ${SECTION}`), "a section of the design notes"],
  [new RegExp(["design", "md"].join("\\.")), "the design notes"],
  [new RegExp(["shared", "reference"].join("/")), "the shared research notes"],
  [new RegExp(`${"reference"}/[\\w.-]*\\.md`), "a research note"],
];

/**
 * A run of section numbers that follows what they belong to: the document's path or an RFC's name, then one
 * section sign and number, then more joined by commas, "and" or "or". Section signs inside such a run are
 * pointers, not bare references.
 */
const SECTION_NUMBER = `${SECTION}\\d+(?:\\.\\d+)*`;
/** More numbers in the same run, joined by a comma, "and" or "or". */
const MORE = `(?:(?:,[ \\t]*|[ \\t]+and[ \\t]+|[ \\t]+or[ \\t]+)${SECTION_NUMBER})*`;
const ATTRIBUTED = new RegExp(`(?:docs/architecture\\.md|RFC \\d+)[ \\t]+${SECTION_NUMBER}${MORE}`, "g");
const POINTER = new RegExp(`docs/architecture\\.md[ \\t]+${SECTION_NUMBER}${MORE}`, "g");
const ANY_SECTION = new RegExp(`${SECTION}(\\d+(?:\\.\\d+)*)`, "g");

export interface Finding {
  line: number;
  text: string;
  problem: string;
}

/** What in `text` cites outside the repository. `self` is true for docs/architecture.md itself. */
export function outsideCitations(text: string, self = false): Finding[] {
  const findings: Finding[] = [];
  text.split("\n").forEach((line, i) => {
    for (const [pattern, what] of OUTSIDE) {
      if (pattern.test(line)) findings.push({ line: i + 1, text: line.trim(), problem: `cites ${what}` });
    }
    if (self) return;
    const allowed = new Set<number>();
    for (const run of line.matchAll(ATTRIBUTED)) {
      for (const sign of run[0].matchAll(ANY_SECTION)) allowed.add(run.index! + sign.index!);
    }
    for (const sign of line.matchAll(ANY_SECTION)) {
      if (!allowed.has(sign.index!)) {
        findings.push({
          line: i + 1,
          text: line.trim(),
          problem: `bare ${sign[0]}: state the fact, or point to a section as "${ARCHITECTURE} ${SECTION}N"`,
        });
      }
    }
  });
  return findings;
}

/** Section numbers a text points to in docs/architecture.md (every `§N` when `self`). */
export function pointers(text: string, self = false): { line: number; section: string }[] {
  const out: { line: number; section: string }[] = [];
  text.split("\n").forEach((line, i) => {
    const runs = self ? [line] : [...line.matchAll(POINTER)].map((m) => m[0]);
    for (const run of runs) {
      for (const sign of run.matchAll(ANY_SECTION)) {
        // In the document itself, an RFC's sections are not its own.
        if (self && /RFC \d+[ \t]+$/.test(line.slice(0, line.indexOf(run) + sign.index!))) continue;
        out.push({ line: i + 1, section: sign[1] });
      }
    }
  });
  return out;
}

/** The numbers of the document's headings: `## 5. Leases` → 5, `### 15.1 CloudPanel` → 15.1. */
export function sectionsOf(markdown: string): Set<string> {
  return new Set([...markdown.matchAll(/^#{2,6} (\d+(?:\.\d+)*)\.? /gm)].map((m) => m[1]));
}

/** The repository's text files: tracked or new (not ignored), without caches, lock files and binaries. */
async function repositoryTexts(): Promise<Map<string, string>> {
  const listed = await new Deno.Command("git", {
    args: ["ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(listed.success, `git ls-files failed: ${new TextDecoder().decode(listed.stderr)}`);
  const paths = [...new Set(new TextDecoder().decode(listed.stdout).split("\0"))].filter((path) =>
    path !== "" && !/(^|\/)(\.cache|node_modules)\//.test(path) && !/(^|\/)deno\.lock$/.test(path)
  );
  const texts = new Map<string, string>();
  const decoder = new TextDecoder("utf-8", { fatal: true });
  for (const path of paths.sort()) {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(`${ROOT}${path}`);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) continue; // deleted in the work tree
      throw error;
    }
    if (bytes.includes(0)) continue;
    try {
      texts.set(path, decoder.decode(bytes));
    } catch {
      // not UTF-8 text
    }
  }
  return texts;
}

const texts = await repositoryTexts();

Deno.test("the citation rules flag documents outside the repository and accept pointers into it", () => {
  const flagged = (text: string) => outsideCitations(text).map((f) => f.problem);
  const design = ["design", "md"].join(".");
  const note = ["reference", "matomo.md"].join("/");
  const bare = (n: string) =>
    `bare ${SECTION}${n}: state the fact, or point to a section as "${ARCHITECTURE} ${SECTION}N"`;
  assert.deepEqual(flagged(`// as the design ${SECTION}4 says`), [
    "cites a section of the design notes",
    bare("4"),
  ]);
  assert.equal(flagged(`// see ${design}`).length, 1);
  assert.equal(flagged(`// follows ${["shared", "reference"].join("/")}/`).length, 1);
  assert.deepEqual(flagged(`// (${note} ${SECTION}3)`), [
    "cites a research note",
    bare("3"),
  ]);
  assert.equal(flagged(`// Parse leniently (${SECTION}2.1, ${SECTION}4)`).length, 2);
  assert.equal(flagged(`// (ref ${SECTION}1.5)`).length, 1);
  assert.deepEqual(flagged(`// duplicates are allowed (${ARCHITECTURE} ${SECTION}15.3)`), []);
  assert.deepEqual(flagged(`// (${ARCHITECTURE} ${SECTION}3, ${SECTION}4 and ${SECTION}15.1)`), []);
  assert.deepEqual(flagged(`// one length (RFC 9110 ${SECTION}8.6)`), []);
  assert.deepEqual(flagged("// the design of the queue; a reference to a value"), []);
  assert.deepEqual(
    pointers(`// ${ARCHITECTURE} ${SECTION}5 and ${SECTION}15.2; RFC 4254 ${SECTION}5.3`).map((p) =>
      p.section
    ),
    ["5", "15.2"],
  );
  assert.deepEqual([...sectionsOf("# T\n\n## 1. One\n\n### 1.2 Two\n\n## Notes\n")], ["1", "1.2"]);
});

Deno.test("docs/architecture.md exists and numbers its sections", () => {
  const doc = texts.get(ARCHITECTURE);
  assert.ok(
    doc !== undefined,
    `${ARCHITECTURE} is missing: the design the code follows must be in the repository`,
  );
  const sections = sectionsOf(doc);
  assert.ok(sections.size >= 10, `${ARCHITECTURE} has ${sections.size} numbered sections`);
  const top = [...sections].filter((n) => !n.includes(".")).map(Number).sort((x, y) => x - y);
  assert.deepEqual(top, top.map((_, i) => i + 1), "top-level sections are numbered 1, 2, 3, … without gaps");
});

Deno.test("no file cites a document outside the repository", () => {
  const findings: string[] = [];
  for (const [path, text] of texts) {
    for (const f of outsideCitations(text, path === ARCHITECTURE)) {
      findings.push(`${path}:${f.line}: ${f.problem}: ${f.text.slice(0, 140)}`);
    }
  }
  assert.ok(texts.size > 50, `only ${texts.size} files were read`);
  assert.deepEqual(
    findings,
    [],
    `${findings.length} citations of documents outside the repository:\n${findings.join("\n")}`,
  );
});

Deno.test("every docs/architecture.md §N names a section that exists", () => {
  const sections = sectionsOf(texts.get(ARCHITECTURE) ?? "");
  const broken: string[] = [];
  let seen = 0;
  for (const [path, text] of texts) {
    for (const { line, section } of pointers(text, path === ARCHITECTURE)) {
      seen++;
      if (!sections.has(section)) broken.push(`${path}:${line}: ${SECTION}${section}`);
    }
  }
  assert.ok(seen > 0, `nothing points into ${ARCHITECTURE}`);
  assert.deepEqual(broken, [], `pointers to sections that do not exist:\n${broken.join("\n")}`);
});
